package envdapi_test

import (
	"encoding/json"
	"net/url"
	"testing"

	"github.com/capsulehq/capsule/internal/envdapi"
)

// The signature is E2B's v1 format; the vectors were computed apart from
// this code (SHA-256, unpadded standard base64).
func TestFileSignature(t *testing.T) {
	exp := int64(1700000000)
	for _, tc := range []struct {
		name string
		op   string
		exp  *int64
		want string
	}{
		{name: "read without expiration", op: "read", want: "v1_p0WqJQYCLtO6YX+e4h7VbpybRsdJbMbIw7clYpulIJk"},
		{name: "write with expiration", op: "write", exp: &exp, want: "v1_x09R0+VxB2mRzkxWcRyFCpiJmFv0okUrtgQ6q12G0jM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := envdapi.FileSignature("/home/user/a.txt", tc.op, "user", "tok", tc.exp); got != tc.want {
				t.Errorf("FileSignature = %q, want %q", got, tc.want)
			}
			q, err := url.ParseQuery(envdapi.SignedFilesQuery("/home/user/a.txt", tc.op, "user", "tok", tc.exp))
			if err != nil {
				t.Fatal(err)
			}
			if q.Get("signature") != tc.want || q.Get("path") != "/home/user/a.txt" || q.Get("username") != "user" {
				t.Errorf("SignedFilesQuery = %v", q)
			}
			if (tc.exp != nil) != q.Has("signature_expiration") {
				t.Errorf("signature_expiration: %v", q)
			}
		})
	}
}

// The JSON field names are E2B's: a rename breaks the SDKs and the host.
func TestWireNames(t *testing.T) {
	tok := "t"
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{name: "init", v: envdapi.InitRequest{EnvVars: map[string]string{"A": "1"}, AccessToken: &tok, DefaultUser: "user",
			DefaultWorkdir: "/w", VolumeMounts: []envdapi.VolumeMount{{NFSTarget: "h:/x", Path: "/x"}}},
			want: `{"envVars":{"A":"1"},"accessToken":"t","defaultUser":"user","defaultWorkdir":"/w","volumeMounts":[{"nfs_target":"h:/x","path":"/x"}]}`},
		{name: "metrics", v: envdapi.Metrics{Timestamp: 1, CPUCount: 2, MemTotalMi: 3},
			want: `{"ts":1,"cpu_count":2,"cpu_used_pct":0,"mem_total":0,"mem_used":0,"mem_cache":0,"mem_total_mib":3,"mem_used_mib":0,"disk_used":0,"disk_total":0}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("got  %s\nwant %s", b, tc.want)
			}
		})
	}
}
