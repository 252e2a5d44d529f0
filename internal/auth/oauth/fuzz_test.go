package oauth

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzStateCookie: the only cookie values that parse are the ones this
// server signed, byte for byte (one spelling per state: canonical base64,
// MAC over every field).
func FuzzStateCookie(f *testing.F) {
	now := time.Unix(1_750_000_000, 0)
	m, err := NewStateManager(StateConfig{Secret: []byte("0123456789abcdef0123456789abcdef"), Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	// Fixed values, identical in every fuzzing worker.
	state := base64.RawURLEncoding.EncodeToString(make([]byte, stateBytes))
	const exp = "1750000600"
	plain := state + "." + exp + "." + base64.RawURLEncoding.EncodeToString(m.mac("github", state, exp))
	data := base64.RawURLEncoding.EncodeToString([]byte(`{"redirect":"/"}`))
	withData := state + "." + exp + "." + data + "." + base64.RawURLEncoding.EncodeToString(m.macData("github", state, exp, data))
	issued := map[string]bool{plain: true, withData: true}
	for v := range issued {
		if _, _, _, ok := m.parse(v, "github"); !ok {
			f.Fatalf("the issued value %q does not parse", v)
		}
		f.Add(v, "github")
		f.Add(v+"A", "github")
		f.Add(v, "gitlab")
		f.Add(strings.Replace(v, exp, "+"+exp, 1), "github")
	}
	f.Add("a.b.c", "github")
	f.Add("...", "")
	f.Fuzz(func(t *testing.T, value, provider string) {
		st, _, _, ok := m.parse(value, provider)
		if !ok {
			return
		}
		if provider != "github" || !issued[value] || st != state {
			t.Fatalf("parse(%q, %q) accepted a value this server never signed", value, provider)
		}
	})
}

// FuzzParseCallback: the provider's redirect back yields a code only when
// it carries one and no error.
func FuzzParseCallback(f *testing.F) {
	for _, s := range []string{"code=abc&state=xyz", "error=access_denied&state=x", "error=server_error", "code=&state=x", "code=a&error=b", "%zz", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest(http.MethodGet, "/callback", nil)
		r.URL.RawQuery = raw
		code, _, err := ParseCallback(r)
		q := r.URL.Query()
		if err == nil && (code == "" || code != q.Get("code") || q.Get("error") != "") {
			t.Fatalf("ParseCallback(%q) = code %q", raw, code)
		}
		if err != nil && code != "" {
			t.Fatalf("ParseCallback(%q) = code %q with error %v", raw, code, err)
		}
	})
}
