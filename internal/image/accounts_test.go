package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAddAccount(t *testing.T) {
	debian := map[string]string{
		"etc/passwd":  "root:x:0:0:root:/root:/bin/bash\n",
		"etc/shadow":  "root:*:19000:0:99999:7:::\n",
		"etc/group":   "root:x:0:\nsudo:x:27:\nadm:x:4:syslog\n",
		"etc/gshadow": "root:*::\nsudo:*::\nadm:*::syslog\n",
	}
	tests := []struct {
		name    string
		files   map[string]string
		acct    account
		want    map[string]string // file → full expected content
		wantErr string
	}{
		{
			name:  "debian files",
			files: debian,
			acct:  account{Name: "user", UID: 1000, GID: 1000, Home: "/home/user", Shell: "/bin/bash", Supplement: []string{"sudo", "adm"}},
			want: map[string]string{
				"etc/passwd":  "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n",
				"etc/shadow":  "root:*:19000:0:99999:7:::\nuser:*::0:99999:7:::\n",
				"etc/group":   "root:x:0:\nsudo:x:27:user\nadm:x:4:syslog,user\nuser:x:1000:\n",
				"etc/gshadow": "root:*::\nsudo:*::user\nadm:*::syslog,user\nuser:!::\n",
			},
		},
		{
			name:  "files created, no gshadow",
			files: map[string]string{},
			acct:  account{Name: "user", UID: 1000, GID: 1000, Home: "/home/user", Shell: "/bin/sh"},
			want: map[string]string{
				"etc/passwd": "user:x:1000:1000::/home/user:/bin/sh\n",
				"etc/group":  "user:x:1000:\n",
			},
		},
		{
			name:    "duplicate user",
			files:   map[string]string{"etc/passwd": "user:x:5:5::/:/bin/sh\n"},
			acct:    account{Name: "user", UID: 1000, GID: 1000},
			wantErr: "user exists already",
		},
		{
			name:    "unknown group",
			files:   debian,
			acct:    account{Name: "user", UID: 1000, GID: 1000, Supplement: []string{"wheel"}},
			wantErr: "group wheel not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for f, c := range tt.files {
				if err := os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, f), []byte(c), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			os.MkdirAll(filepath.Join(root, "etc"), 0o755)
			err := addAccount(root, tt.acct)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for f, want := range tt.want {
				got, err := os.ReadFile(filepath.Join(root, f))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != want {
					t.Errorf("%s:\n%s\nwant:\n%s", f, got, want)
				}
			}
			if _, err := os.Stat(filepath.Join(root, "etc/gshadow")); tt.files["etc/gshadow"] == "" && err == nil {
				t.Error("gshadow created")
			}
		})
	}
}
