package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecode: every JSON body the API reads is either decoded (and then
// means the same once encoded and decoded again) or refused with a 400;
// never a 5xx or a panic.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"template":"base","vcpus":2,"memory_mb":512,"timeout_sec":60,"env_vars":{"A":"b"},"metadata":{"k":"v"},"auto_pause":false}`,
		`{"cmd":"echo hi","env":{"A":"1"},"cwd":"/tmp","user":"root","timeout_sec":5,"stdin":"x"}`,
		`{"argv":["ls","-la"]}`,
		`{"name":"snap"}`, `{"email":"a@b.c","password":"pw"}`, `{"path":"/x"}`, `{"timeout_sec":10}`,
		`{"template":1}`, `{"unknown":true}`, `{} {}`, `{}x`, `[]`, `null`, ``, `{`, `{"name":"\ud800"}`, "{\"name\":\"\xff\"}",
		`{"vcpus":1e100}`, `{"metadata":{"a":null}}`,
	} {
		f.Add(s)
	}
	types := []func() any{
		func() any { return new(createSandboxJSON) }, func() any { return new(execJSON) }, func() any { return new(createSnapshotJSON) },
		func() any { return new(createKeyJSON) }, func() any { return new(credentials) }, func() any { return new(nameBody) },
		func() any { return new(mkdirJSON) }, func() any { return new(timeoutJSON) },
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, newV := range types {
			v := newV()
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
			if err := decode(r, httptest.NewRecorder(), v); err != nil {
				if s := StatusOf(err); s != http.StatusBadRequest {
					t.Fatalf("%T from %q: answered %d (%v)", v, body, s, err)
				}
				continue
			}
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%T from %q does not encode: %v", v, body, err)
			}
			again := newV()
			r = httptest.NewRequest(http.MethodPost, "/", strings.NewReader(string(b)))
			if err := decode(r, httptest.NewRecorder(), again); err != nil || !reflect.DeepEqual(v, again) {
				t.Fatalf("%T from %q: %+v encodes as %s, which decodes as %+v (%v)", v, body, v, b, again, err)
			}
		}
	})
}

// FuzzSafeRedirect: a redirect target the OAuth routes accept stays on
// this server (a path here), whatever a link's ?redirect= says; a refused
// one is a 400.
func FuzzSafeRedirect(f *testing.F) {
	for _, s := range []string{
		"/", "/dashboard?tab=keys", "/a/b#frag", "//evil.example", "/\\evil.example", "https://evil.example", "/%2F%2Fevil.example",
		"/\t/evil.example", "/ /x", "javascript:alert(1)", "/x:y", "/..//evil.example", "", "/@evil.example", "/\u2028",
	} {
		f.Add(s)
	}
	base, _ := url.Parse("https://capsule.example/app/")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := safeRedirect(s)
		if err != nil {
			if StatusOf(err) != http.StatusBadRequest {
				t.Fatalf("safeRedirect(%q): %v is not a 400", s, err)
			}
			return
		}
		if !strings.HasPrefix(got, "/") || strings.HasPrefix(got, "//") || strings.Contains(got, `\`) {
			t.Fatalf("safeRedirect(%q) = %q", s, got)
		}
		// As a browser resolves the Location (with the fragment the
		// callback appends).
		u, err := base.Parse(got + "#error=x")
		if err != nil || u.Scheme != "https" || u.Host != "capsule.example" || u.User != nil {
			t.Fatalf("safeRedirect(%q) = %q leads to %v (%v)", s, got, u, err)
		}
	})
}

// FuzzListParams: ?limit= is a positive number or a 400, and multi-value
// filters (?state=a,b&state=c) never yield an empty, padded or
// comma-holding value.
func FuzzListParams(f *testing.F) {
	for _, s := range []string{
		"limit=10&state=running,paused&state=%20stopped%20", "limit=0", "limit=-1", "limit=abc", "limit=99999999999999999999",
		"limit=&limit=5", "state=,,&state=", "action=a%2Cb", "%zz&limit=1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, _ := url.ParseQuery(raw)
		n, err := pageLimit(q)
		if err != nil {
			if StatusOf(err) != http.StatusBadRequest {
				t.Fatalf("pageLimit(%q): %v is not a 400", raw, err)
			}
		} else if n < 0 {
			t.Fatalf("pageLimit(%q) = %d", raw, n)
		}
		for _, name := range []string{"state", "action", "resource_type"} {
			for _, v := range MultiValue(q, name) {
				if v == "" || v != strings.TrimSpace(v) || strings.Contains(v, ",") {
					t.Fatalf("MultiValue(%q, %s) gave %q", raw, name, v)
				}
			}
		}
	})
}
