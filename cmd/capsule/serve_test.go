package main

import "testing"

func TestParseServeFlags(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		listen     string
		dsn        string
		wantErr    bool
		adminEmail string
	}{
		{name: "defaults", listen: ":8080", adminEmail: "admin@capsule.local"},
		{name: "env", env: map[string]string{"CAPSULE_LISTEN": "127.0.0.1:9090", "DATABASE_URL": "postgres://x"}, listen: "127.0.0.1:9090", dsn: "postgres://x", adminEmail: "admin@capsule.local"},
		{name: "flag beats env", args: []string{"--listen", ":1"}, env: map[string]string{"CAPSULE_LISTEN": ":2"}, listen: ":1", adminEmail: "admin@capsule.local"},
		{name: "admin e-mail", args: []string{"--admin-email", "me@example.com"}, listen: ":8080", adminEmail: "me@example.com"},
		{name: "negative capacity", args: []string{"--max-vcpus", "-1"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseServeFlags(tc.args, func(k string) string { return tc.env[k] })
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.listen != tc.listen || o.databaseURL != tc.dsn || o.adminEmail != tc.adminEmail || o.capacity.VCPUs <= 0 {
				t.Fatalf("%+v", o)
			}
		})
	}
}
