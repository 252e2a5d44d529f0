package agent

import (
	"context"
	"strings"
	"testing"
)

// FuzzProxyAuthorization: the only Capsule-Proxy-Authorization values
// the agent accepts carry its token after the Bearer scheme (any case,
// surrounding blanks aside).
func FuzzProxyAuthorization(f *testing.F) {
	const secret = "agent-secret-0123456789"
	v, err := NewStaticToken(secret)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"Bearer " + secret, "bearer   " + secret + " ", "Bearer " + secret + "x", "Basic " + secret, secret, "Bearer", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, ok := bearerValue(header)
		if !ok || v.Verify(context.Background(), tok) != nil {
			return
		}
		scheme, rest, _ := strings.Cut(header, " ")
		if tok != secret || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) != secret {
			t.Fatalf("accepted %q", header)
		}
	})
}
