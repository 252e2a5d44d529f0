package sandbox

import (
	"errors"
	"testing"
)

// TestValidManifest: an imported manifest must name a template that may
// be created, safe relative paths inside its directory, backing files it
// carries, and the files its kind needs; anything else is ErrInvalid
// before a byte is written.
func TestValidManifest(t *testing.T) {
	good := func() *TemplateManifest {
		return &TemplateManifest{Name: "tpl-1", Kind: KindSnapshot, ImageID: "img", DiskSize: 1 << 20, VCPUs: 1, MemoryMB: 256,
			Rootfs: "snapshot/disk0.qcow2", Snapshot: "snapshot",
			Files: []TemplateFile{
				{Path: "snapshot/snapshot.json", Size: 10},
				{Path: "snapshot/disk0.qcow2", Size: 10, Backing: "chain/1/rootfs.qcow2"},
				{Path: "chain/1/rootfs.qcow2", Size: 10, BackingImage: true},
			}}
	}
	if err := validManifest(good()); err != nil {
		t.Fatalf("a good manifest: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(m *TemplateManifest)
	}{
		{"a path out of the directory", func(m *TemplateManifest) { m.Files[0].Path = "../x" }},
		{"a path with .. inside", func(m *TemplateManifest) { m.Files[2].Path = "chain/../../x" }},
		{"an absolute path", func(m *TemplateManifest) { m.Files[0].Path = "/etc/shadow" }},
		{"an unclean path", func(m *TemplateManifest) { m.Files[0].Path = "snapshot//snapshot.json" }},
		{"a NUL in a path", func(m *TemplateManifest) { m.Files[0].Path = "a\x00b" }},
		{"a duplicate path", func(m *TemplateManifest) { m.Files[2].Path = m.Files[1].Path }},
		{"a file that is another's directory", func(m *TemplateManifest) { m.Files[2].Path = "snapshot/disk0.qcow2/x" }},
		{"a backing file not in the manifest", func(m *TemplateManifest) { m.Files[1].Backing = "elsewhere" }},
		{"a file backing onto itself", func(m *TemplateManifest) { m.Files[1].Backing = m.Files[1].Path }},
		{"both backings", func(m *TemplateManifest) { m.Files[1].BackingImage = true }},
		{"a disk not in the manifest", func(m *TemplateManifest) { m.Rootfs = "rootfs.raw" }},
		{"a snapshot without its metadata", func(m *TemplateManifest) { m.Snapshot = "chain" }},
		{"a snapshot without a shape", func(m *TemplateManifest) { m.VCPUs = 0 }},
		{"a negative size", func(m *TemplateManifest) { m.Files[0].Size = -1 }},
		{"no disk size", func(m *TemplateManifest) { m.DiskSize = 0 }},
		{"an unknown kind", func(m *TemplateManifest) { m.Kind = "vm" }},
		{"a built-in image's name", func(m *TemplateManifest) { m.Name = "base" }},
		{"a warm snapshot's name", func(m *TemplateManifest) { m.Name = warmPrefix + "x" }},
		{"a name with a slash", func(m *TemplateManifest) { m.Name = "a/b" }},
		{"no files", func(m *TemplateManifest) { m.Files = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := good()
			tc.edit(m)
			if err := validManifest(m); !errors.Is(err, ErrInvalid) {
				t.Fatalf("validManifest = %v, want ErrInvalid", err)
			}
		})
	}
}
