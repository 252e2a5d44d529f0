package sandbox_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// export is a template exported into memory: its manifest and chunks.
type export struct {
	man    *sandbox.TemplateManifest
	chunks []*sandbox.TemplateChunk
}

func exportTemplate(t *testing.T, ctx context.Context, m *sandbox.Manager, name string) *export {
	t.Helper()
	x := &export{}
	err := m.ExportTemplate(ctx, name, func(man *sandbox.TemplateManifest) error { x.man = man; return nil },
		func(c *sandbox.TemplateChunk) error {
			cc := *c
			cc.Data = slices.Clone(c.Data)
			x.chunks = append(x.chunks, &cc)
			return nil
		})
	if err != nil {
		t.Fatalf("export %s: %v", name, err)
	}
	return x
}

// importAs imports x under name, its chunks passed through edit (nil: as
// they are; edit may drop one by returning nil).
func importAs(ctx context.Context, m *sandbox.Manager, x *export, name string, edit func(i int, c *sandbox.TemplateChunk) *sandbox.TemplateChunk) (*sandbox.Template, []string, error) {
	man := *x.man
	man.Name = name
	i := 0
	tpl, _, evicted, err := m.ImportTemplate(ctx, &man, func() (*sandbox.TemplateChunk, error) {
		for i < len(x.chunks) {
			c := *x.chunks[i]
			c.Data = slices.Clone(c.Data)
			i++
			if edit == nil {
				return &c, nil
			}
			if e := edit(i-1, &c); e != nil {
				return e, nil
			}
		}
		return nil, io.EOF
	})
	return tpl, evicted, err
}

// templateDirs lists name's template directories under dataDir.
func templateDirs(dataDir, name string) []string {
	m, _ := filepath.Glob(filepath.Join(dataDir, "templates", name+"-*"))
	return m
}

// TestTemplateExportImport: a snapshot template whose disk chains onto
// another template's is exported and imported (on the same manager, under
// other names: the copy's files are its own, in a new directory) and
// restores with both layers' files and the saved processes; a corrupted,
// a truncated and malformed streams are refused and leave nothing; the
// replicas are evicted least recently used first when the disk runs low,
// never one a sandbox reads through, and an import that eviction cannot
// make room for is refused.
func TestTemplateExportImport(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 10*time.Minute)
	var x *export
	var inUse string
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a chained snapshot template is exported with its parent's layer", func(t *testing.T) {
			src, c := e.create(ctx, sandbox.CreateOptions{})
			sh(t, ctx, c, "echo parent > /root/parent.txt")
			if _, err := e.mgr.CreateSnapshot(ctx, src.ID, "xp-parent"); err != nil {
				t.Fatal(err)
			}
			child, cc := e.create(ctx, sandbox.CreateOptions{Template: "xp-parent"})
			sh(t, ctx, cc, "echo child > /root/child.txt")
			startBackground(t, ctx, cc, counterScript)
			time.Sleep(time.Second)
			if _, err := e.mgr.CreateSnapshot(ctx, child.ID, "xp-child"); err != nil {
				t.Fatal(err)
			}
			x = exportTemplate(t, ctx, e.mgr, "xp-child")
			var chained bool
			for _, f := range x.man.Files {
				chained = chained || strings.HasPrefix(f.Path, "chain/")
			}
			if !chained || x.man.Kind != sandbox.KindSnapshot {
				t.Fatalf("manifest %+v: no layer of the parent", x.man)
			}
		}},
		{"the import restores both layers and the saved processes", func(t *testing.T) {
			tpl, _, err := importAs(ctx, e.mgr, x, "xp-r1", nil)
			if err != nil {
				t.Fatal(err)
			}
			if !tpl.Replica {
				t.Fatal("an imported template is not a replica")
			}
			// Self-contained: its chain leaves its directory only for the image.
			chain, err := disk.BackingChain(tpl.Rootfs)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range chain[:len(chain)-1] {
				if !strings.HasPrefix(p, tpl.Dir+"/") {
					t.Fatalf("the copy's chain %v leaves its directory %s", chain, tpl.Dir)
				}
			}
			info, c := e.create(ctx, sandbox.CreateOptions{Template: "xp-r1"})
			inUse = info.ID
			if got := sh(t, ctx, c, "cat /root/parent.txt /root/child.txt"); got != "parent\nchild" {
				t.Fatalf("files of the copy: %q", got)
			}
			if n := atoi(t, sh(t, ctx, c, "sleep 0.5; cat /tmp/counter.now")); n < 1 {
				t.Fatalf("the saved counter process: %d", n)
			}
		}},
		{"bad streams are refused and leave nothing", func(t *testing.T) {
			flipped, lost := false, false
			for _, tc := range []struct {
				name string
				want error
				edit func(i int, c *sandbox.TemplateChunk) *sandbox.TemplateChunk
				man  func(m *sandbox.TemplateManifest)
			}{
				{"a flipped bit", sandbox.ErrCorrupt, func(_ int, c *sandbox.TemplateChunk) *sandbox.TemplateChunk {
					if len(c.Data) > 100 && !flipped {
						c.Data[100] ^= 1
						flipped = true
					}
					return c
				}, nil},
				{"a lost chunk", sandbox.ErrCorrupt, func(_ int, c *sandbox.TemplateChunk) *sandbox.TemplateChunk {
					if len(c.Data) > 0 && !lost {
						lost = true
						return nil
					}
					return c
				}, nil},
				{"a truncated stream", sandbox.ErrInvalid, func(i int, c *sandbox.TemplateChunk) *sandbox.TemplateChunk {
					if i >= len(x.chunks)-1 {
						return nil
					}
					return c
				}, nil},
				{"a path out of the directory", sandbox.ErrInvalid, nil, func(m *sandbox.TemplateManifest) { m.Files[0].Path = "../escape" }},
				{"an absolute path", sandbox.ErrInvalid, nil, func(m *sandbox.TemplateManifest) { m.Files[0].Path = "/etc/passwd" }},
				{"a backing file not sent", sandbox.ErrInvalid, nil, func(m *sandbox.TemplateManifest) { m.Files[0].Backing = "nowhere" }},
				{"a built-in name", sandbox.ErrInvalid, nil, func(m *sandbox.TemplateManifest) { m.Name = "minimal" }},
				{"an unknown image", sandbox.ErrConflict, nil, func(m *sandbox.TemplateManifest) { m.ImageID = "0123456789abcdef0123456789abcdef" }},
			} {
				t.Run(tc.name, func(t *testing.T) {
					bad := *x
					man := *x.man
					man.Files = slices.Clone(x.man.Files)
					bad.man = &man
					if tc.man != nil {
						tc.man(&man)
					}
					name := "xp-bad"
					if man.Name != x.man.Name {
						name = man.Name
					}
					if _, _, err := importAs(ctx, e.mgr, &bad, name, tc.edit); !errors.Is(err, tc.want) {
						t.Fatalf("import: %v, want %v", err, tc.want)
					}
					if d := templateDirs(e.dataDir, "xp-bad"); len(d) != 0 {
						t.Fatalf("left behind: %v", d)
					}
					ts, _ := e.mgr.Templates()
					for _, tpl := range ts {
						if tpl.Name == "xp-bad" {
							t.Fatal("the refused import is listed")
						}
					}
				})
			}
		}},
		{"eviction: least recently used replicas first, never one in use", func(t *testing.T) {
			for _, n := range []string{"xp-r2", "xp-r3"} {
				if _, _, err := importAs(ctx, e.mgr, x, n, nil); err != nil {
					t.Fatal(err)
				}
			}
			// r1 (in use) is the least recently used, then r2, then r3.
			old := time.Now().Add(-time.Hour)
			for i, n := range []string{"xp-r1", "xp-r2", "xp-r3"} {
				at := old.Add(time.Duration(i) * time.Minute)
				if err := os.Chtimes(filepath.Join(e.dataDir, "templates", n+".json"), at, at); err != nil {
					t.Fatal(err)
				}
			}
			var need int64
			for _, f := range x.man.Files {
				need += f.Allocated
			}
			needMB := need>>20 + 1
			var st unix.Statfs_t
			if err := unix.Statfs(e.dataDir, &st); err != nil {
				t.Fatal(err)
			}
			free := int64(st.Bavail) * int64(st.Bsize) >> 20
			// One replica's worth of room short: evicting r2 makes it.
			sandbox.SetDiskHeadroom(e.mgr, free-needMB+needMB/2)
			_, evicted, err := importAs(ctx, e.mgr, x, "xp-r4", nil)
			if err != nil || !slices.Equal(evicted, []string{"xp-r2"}) {
				t.Fatalf("import with eviction: evicted %v, %v; want xp-r2", evicted, err)
			}
			if len(templateDirs(e.dataDir, "xp-r2")) != 0 || len(templateDirs(e.dataDir, "xp-r1")) != 1 {
				t.Fatalf("after eviction: r1 %v, r2 %v", templateDirs(e.dataDir, "xp-r1"), templateDirs(e.dataDir, "xp-r2"))
			}
			// No room whatever is evicted: refused, nothing of it kept,
			// the replica in use still there.
			sandbox.SetDiskHeadroom(e.mgr, free+1<<20)
			if _, _, err := importAs(ctx, e.mgr, x, "xp-r5", nil); !errors.Is(err, sandbox.ErrNoSpace) {
				t.Fatalf("import without room: %v", err)
			}
			sandbox.SetDiskHeadroom(e.mgr, 0)
			if len(templateDirs(e.dataDir, "xp-r5")) != 0 || len(templateDirs(e.dataDir, "xp-r1")) != 1 {
				t.Fatalf("after a refused import: r5 %v, r1 %v", templateDirs(e.dataDir, "xp-r5"), templateDirs(e.dataDir, "xp-r1"))
			}
			if _, err := e.mgr.Get(inUse); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, s := range steps {
		if !e.step(s.name, s.run) {
			return
		}
	}
}
