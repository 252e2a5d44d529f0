package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

type stubProvider struct{ name string }

func (s stubProvider) AuthCodeURL(state string) string {
	return "https://" + s.name + "/auth?state=" + state
}
func (s stubProvider) Exchange(context.Context, string) (Profile, error) {
	return Profile{ProviderUserID: s.name}, nil
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	if err := r.Register("github", stubProvider{"gh"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Register("google", stubProvider{"go"}); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]Provider{
		"github":                            stubProvider{"again"}, // duplicate
		"":                                  stubProvider{},
		"GitHub":                            stubProvider{},
		"-x":                                stubProvider{},
		"a/b":                               stubProvider{},
		"a b":                               stubProvider{},
		"gitlab":                            nil,
		"very-long-provider-name-over-32-c": stubProvider{},
	} {
		if err := r.Register(name, p); err == nil {
			t.Errorf("Register(%q) accepted", name)
		}
	}
	p, ok := r.Lookup("github")
	if !ok || p.(stubProvider).name != "gh" {
		t.Fatal("Lookup(github)")
	}
	if _, ok := r.Lookup("gitlab"); ok {
		t.Fatal("Lookup(gitlab)")
	}
	if _, err := r.Get("gitlab"); !errors.Is(err, ErrUnknownProvider) {
		t.Fatalf("Get(gitlab) = %v", err)
	}
	if got := r.Names(); !slices.Equal(got, []string{"github", "google"}) {
		t.Fatalf("Names = %v", got)
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r := NewRegistry()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(2)
		go func() { defer wg.Done(); _ = r.Register(fmt.Sprint("p", i), stubProvider{}) }()
		go func() { defer wg.Done(); r.Lookup(fmt.Sprint("p", i)); r.Names() }()
	}
	wg.Wait()
	if len(r.Names()) != 20 {
		t.Fatal("lost registrations")
	}
}

func TestParseCallback(t *testing.T) {
	tests := []struct {
		query, code, state string
		err                error
	}{
		{"code=abc&state=s1", "abc", "s1", nil},
		{"error=access_denied&error_description=The+user+has+denied&state=s1", "", "s1", ErrAccessDenied},
		{"error=redirect_uri_mismatch&state=s1", "", "s1", ErrInvalidCode},
		{"state=s1", "", "s1", ErrInvalidCode},
		{"code=abc&error=access_denied", "", "", ErrAccessDenied},
	}
	for _, tt := range tests {
		code, state, err := ParseCallback(httptest.NewRequest("GET", "/cb?"+tt.query, nil))
		if code != tt.code || state != tt.state || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("ParseCallback(%q) = %q, %q, %v", tt.query, code, state, err)
		}
	}
}
