package main

import "testing"

func TestParseServeOAuthFlags(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		publicURL string
		github    bool
		wantErr   bool
	}{
		{name: "defaults", publicURL: "http://localhost:8080"},
		{name: "env", env: map[string]string{"CAPSULE_PUBLIC_URL": "https://capsule.example.com/", "CAPSULE_GITHUB_CLIENT_ID": "Iv1.x", "CAPSULE_GITHUB_CLIENT_SECRET": "s"},
			publicURL: "https://capsule.example.com", github: true},
		{name: "flags", args: []string{"-github-client-id", "a", "-github-client-secret", "b", "-public-url", "http://10.0.0.1:8080"}, publicURL: "http://10.0.0.1:8080", github: true},
		{name: "ID without secret", env: map[string]string{"CAPSULE_GITHUB_CLIENT_ID": "Iv1.x"}, wantErr: true},
		{name: "public URL with a path", args: []string{"-public-url", "https://x.example/api"}, wantErr: true},
		{name: "public URL without scheme", args: []string{"-public-url", "capsule.example.com"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseServeFlags(tc.args, func(k string) string { return tc.env[k] }, "")
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.publicURL != tc.publicURL {
				t.Fatalf("public URL %q, want %q", o.publicURL, tc.publicURL)
			}
			reg, states, err := oauthProviders(o, []byte("0123456789abcdef0123456789abcdef"))
			if err != nil || states == nil {
				t.Fatal(err)
			}
			if _, ok := reg.Lookup("github"); ok != tc.github {
				t.Fatalf("github registered: %v, want %v", ok, tc.github)
			}
		})
	}
}
