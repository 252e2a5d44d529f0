package envd

import (
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzResolvePath: whatever a client names (and whatever /init set as the
// default workdir), the path envd opens is absolute and clean.
func FuzzResolvePath(f *testing.F) {
	for _, s := range [][2]string{
		{"", ""}, {"", "/work"}, {"~", ""}, {"~/a/../../../etc", ""}, {"~root", ""},
		{"/etc/passwd", ""}, {"/a/./b//c/", ""}, {"a/b", "/w"}, {"../../x", ""}, {".", ""}, {"\x00", ""},
	} {
		f.Add(s[0], s[1])
	}
	a := &account{Name: "user", UID: 1000, GID: 1000, Home: "/home/user"}
	f.Fuzz(func(t *testing.T, p, workdir string) {
		got, err := resolvePath(p, a, workdir)
		if err != nil {
			if !errors.Is(err, errTildeUser) {
				t.Fatalf("resolvePath(%q, workdir %q): unexpected error %v", p, workdir, err)
			}
			return
		}
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Fatalf("resolvePath(%q, workdir %q) = %q, not absolute and clean", p, workdir, got)
		}
	})
}

// FuzzFilesSignature: a /files request without X-Access-Token passes only
// with the signature of exactly the operation, path, user and expiry it
// was made for (the signed string is "path:op:user:token[:exp]", so only
// a different split of the same string could reuse it), and never once
// expired.
func FuzzFilesSignature(f *testing.F) {
	const token = "fuzz-access-token"
	now := time.Unix(1_750_000_000, 0)
	s := New(Config{Now: func() time.Time { return now }})
	s.accessToken = token
	later, earlier := now.Unix()+60, now.Unix()-1
	f.Add("read", SignedFilesQuery("/home/user/a.txt", "read", "user", token, nil))
	f.Add("read", SignedFilesQuery("/home/user/a.txt", "read", "user", token, &later))
	f.Add("write", SignedFilesQuery("a.txt", "write", "", token, &later))
	f.Add("read", SignedFilesQuery("/x", "read", "root", token, &earlier))
	f.Add("write", SignedFilesQuery("/x", "read", "root", token, nil))
	f.Add("read", "path=/x&signature=v1_&signature_expiration=abc")
	f.Add("read", "signature=v1_AAAA&signature=v1_BBBB&path=%zz")
	f.Fuzz(func(t *testing.T, op, rawQuery string) {
		if op != "read" {
			op = "write"
		}
		r := httptest.NewRequest(http.MethodGet, "/files", nil)
		r.URL.RawQuery = rawQuery
		if err := s.checkFilesAuth(r, op); err != nil {
			var ae *authError
			if !errors.As(err, &ae) {
				t.Fatalf("checkFilesAuth(%q): error %v is not an authError", rawQuery, err)
			}
			return
		}
		q := r.URL.Query()
		var exp *int64
		if v := q.Get("signature_expiration"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("accepted %q with a malformed expiration", rawQuery)
			}
			if n < now.Unix() {
				t.Fatalf("accepted %q, expired", rawQuery)
			}
			exp = &n
		}
		signed := q.Get("path") + ":" + op + ":" + q.Get("username") + ":" + token
		if exp != nil {
			signed += ":" + strconv.FormatInt(*exp, 10)
		}
		if q.Get("signature") != FileSignature(q.Get("path"), op, q.Get("username"), token, exp) {
			t.Fatalf("accepted %q for %s without its signature (signed string %q)", rawQuery, op, signed)
		}
	})
}

// FuzzParseAcceptEncoding: every coding has a lower-case trimmed name and
// a q-value in [0, 1]; the chosen response encoding is one envd can send.
func FuzzParseAcceptEncoding(f *testing.F) {
	for _, s := range []string{
		"gzip", "gzip;q=0.5, identity;q=1", "*;q=0", "identity;q=0", "GZIP ; Q=1.0", "br, deflate", "gzip;q=1e400",
		"gzip;q=-0", ";;,,=", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for _, c := range parseAcceptEncoding(v) {
			if c.name == "" || c.name != strings.ToLower(strings.TrimSpace(c.name)) || !(c.q >= 0 && c.q <= 1) {
				t.Fatalf("parseAcceptEncoding(%q) gave %+v", v, c)
			}
		}
		switch enc := responseEncoding(http.Header{"Accept-Encoding": {v}}); enc {
		case "", "gzip", "identity":
		default:
			t.Fatalf("responseEncoding(%q) = %q", v, enc)
		}
	})
}

// FuzzParseMetadata: accepted X-Metadata-* headers become lower-case
// printable keys and values within the xattr limits; refused ones are a
// 400.
func FuzzParseMetadata(f *testing.F) {
	f.Add("X-Metadata-Owner", "alice", "X-Metadata-owner", "bob")
	f.Add("X-Metadata-", "x", "X-Other", "y")
	f.Add("x-metadata-k\x01", "v", "X-Metadata-K2", "v\xff")
	f.Add("X-Metadata-"+strings.Repeat("k", 300), "v", "X-Metadata-a", strings.Repeat("v", 5000))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		h := http.Header{}
		h[k1] = append(h[k1], v1)
		h[k2] = append(h[k2], v2)
		md, err := parseMetadata(h)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.status != http.StatusBadRequest {
				t.Fatalf("parseMetadata: %v is not a 400", err)
			}
			return
		}
		total := 0
		for k, v := range md {
			if k == "" || k != strings.ToLower(k) || !printableASCII(k) || !printableASCII(v) || len(k) > maxMetadataKey {
				t.Fatalf("parseMetadata accepted %q=%q", k, v)
			}
			total += len(metadataPrefix) + len(k) + len(v)
		}
		if total > maxMetadataTotal {
			t.Fatalf("parseMetadata accepted %d bytes of metadata", total)
		}
	})
}

// FuzzBasicUser: the user of an Authorization: Basic header is non-empty
// and stops at the first colon.
func FuzzBasicUser(f *testing.F) {
	for _, s := range []string{
		"Basic " + base64.StdEncoding.EncodeToString([]byte("user:")), "basic " + base64.StdEncoding.EncodeToString([]byte("root")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte(":pw")), "Basic !!!", "Bearer x", "Basic", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		name, err := basicUser(http.Header{"Authorization": {v}})
		if err != nil {
			return
		}
		if name == "" || strings.Contains(name, ":") {
			t.Fatalf("basicUser(%q) = %q", v, name)
		}
	})
}

// FuzzKeepaliveInterval: whatever a client sends as
// Keepalive-Ping-Interval, the interval is positive (a non-positive one
// would make a stream send keepalives in a busy loop).
func FuzzKeepaliveInterval(f *testing.F) {
	for _, s := range []string{"30", "0", "-5", "1", "abc", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if d := keepaliveInterval(http.Header{"Keepalive-Ping-Interval": {v}}); d <= 0 {
			t.Fatalf("keepaliveInterval(%q) = %v", v, d)
		}
	})
}

// FuzzInit: POST /init (the control plane's call, through envd's whole
// handler) answers a 2xx or a 4xx for any body and access header, never a
// 5xx or a panic; a refused call changes nothing.
func FuzzInit(f *testing.F) {
	for _, s := range []string{
		`{"envVars":{"A":"b"},"accessToken":"tok","defaultUser":"root","defaultWorkdir":"/tmp","timestamp":"2026-01-01T00:00:00Z"}`,
		`{"accessToken":null}`, `{"defaultUser":"no-such-user-here"}`, `{"timestamp":"yesterday"}`, `{"envVars":[]}`,
		`{"volumeMounts":[{"nfs_target":"x","path":"/mnt"}],"hyperloopIP":"1.2.3.4"}`, `{"caBundle":"-----BEGIN"}`, `[]`, `{`, ``,
	} {
		f.Add(s, "")
		f.Add(s, "old-token")
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, body, header string) {
		s := New(Config{Logger: quiet})
		s.accessToken = "old-token"
		r := httptest.NewRequest(http.MethodPost, "/init", strings.NewReader(body))
		if header != "" {
			r.Header.Set("X-Access-Token", header)
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		switch {
		case w.Code >= 200 && w.Code < 300:
		case w.Code >= 400 && w.Code < 500:
			if s.token() != "old-token" {
				t.Fatalf("/init %q answered %d but changed the token", body, w.Code)
			}
		default:
			t.Fatalf("/init %q (X-Access-Token %q) answered %d: %s", body, header, w.Code, w.Body)
		}
	})
}
