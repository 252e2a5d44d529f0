package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/envdapi"
)

// countingResolver runs many sandboxes and counts what the signer index
// asks of it: list queries and envd token derivations (HMACs).
type countingResolver struct {
	nilResolver
	mu    sync.Mutex
	ids   []string
	lists int
	hmacs int
}

func (c *countingResolver) RunningSandboxes(context.Context) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lists++
	return append([]string(nil), c.ids...), nil
}

func (c *countingResolver) EnvdToken(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hmacs++
	return "token-of-" + id
}

func (c *countingResolver) counts() (lists, hmacs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lists, c.hmacs
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func signedFor(t *testing.T, path, op, user, token string, exp *int64) fileSig {
	t.Helper()
	f, ok := newFileSig(path, op, user, exp, envdapi.FileSignature(path, op, user, token, exp))
	if !ok {
		t.Fatalf("newFileSig refused envd's own signature of %q", path)
	}
	return f
}

// TestSignerIndexCost: finding the sandbox of a signed file URL that names
// none costs no HMAC and no database query per request: tokens are derived
// once per sandbox, the running list is reloaded at a bounded rate.
func TestSignerIndexCost(t *testing.T) {
	const n = 1000
	res := &countingResolver{}
	for i := range n {
		res.ids = append(res.ids, fmt.Sprintf("%032x", i))
	}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	x := &signerIndex{res: res, now: clock.Now, ttl: 2 * time.Second, refresh: time.Nanosecond}
	ctx := context.Background()

	t.Run("hits: one list and one HMAC per sandbox, for any number of requests", func(t *testing.T) {
		for i := range 300 {
			id := res.ids[(i*37)%n]
			got, err := x.lookup(ctx, signedFor(t, fmt.Sprintf("/home/user/f%d.html", i), "read", "user", "token-of-"+id, nil), allowAll)
			if err != nil || got != id {
				t.Fatalf("request %d: %q, %v; want %q", i, got, err, id)
			}
		}
		if lists, hmacs := res.counts(); lists != 1 || hmacs != n {
			t.Fatalf("%d lists and %d HMACs for 300 requests over %d sandboxes; want 1 and %d", lists, hmacs, n, n)
		}
	})
	t.Run("a sandbox started since the load is found after one reload, one new HMAC", func(t *testing.T) {
		id := fmt.Sprintf("%032x", n)
		res.mu.Lock()
		res.ids = append(res.ids, id)
		res.mu.Unlock()
		exp := int64(1_700_000_060)
		got, err := x.lookup(ctx, signedFor(t, "out.txt", "write", "", "token-of-"+id, &exp), allowAll)
		if err != nil || got != id {
			t.Fatalf("%q, %v", got, err)
		}
		if lists, hmacs := res.counts(); lists != 2 || hmacs != n+1 {
			t.Fatalf("%d lists, %d HMACs; want 2 and %d", lists, hmacs, n+1)
		}
	})
	t.Run("forged signatures: not found, no HMAC, at most one reload each", func(t *testing.T) {
		lists0, _ := res.counts()
		for i := range 50 {
			_, err := x.lookup(ctx, signedFor(t, "/etc/passwd", "read", "", fmt.Sprintf("guess-%d", i), nil), allowAll)
			if err != ErrNotFound {
				t.Fatalf("forged %d: %v", i, err)
			}
		}
		if lists, hmacs := res.counts(); lists-lists0 > 50 || hmacs != n+1 {
			t.Fatalf("%d reloads and %d HMACs after 50 forged URLs; want ≤ 50 and %d", lists-lists0, hmacs, n+1)
		}
	})
	t.Run("past the TTL: one reload, known tokens kept", func(t *testing.T) {
		lists0, _ := res.counts()
		clock.Advance(3 * time.Second)
		for i := range 20 {
			id := res.ids[i]
			if got, err := x.lookup(ctx, signedFor(t, "a", "read", "", "token-of-"+id, nil), allowAll); err != nil || got != id {
				t.Fatalf("%q, %v", got, err)
			}
		}
		if lists, hmacs := res.counts(); lists-lists0 != 1 || hmacs != n+1 {
			t.Fatalf("%d reloads, %d HMACs; want 1 and %d", lists-lists0, hmacs, n+1)
		}
	})
	t.Run("a stopped sandbox leaves the index", func(t *testing.T) {
		id := res.ids[0]
		res.mu.Lock()
		res.ids = res.ids[1:]
		res.mu.Unlock()
		clock.Advance(3 * time.Second)
		if got, err := x.lookup(ctx, signedFor(t, "a", "read", "", "token-of-"+id, nil), allowAll); err != ErrNotFound {
			t.Fatalf("%q, %v", got, err)
		}
	})
}

// TestSignerIndexRefreshWaits: misses reload at most once per
// SignerRefresh; a miss inside that window waits for it (bounded by its
// context).
func TestSignerIndexRefreshWaits(t *testing.T) {
	res := &countingResolver{ids: []string{"a"}}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	x := &signerIndex{res: res, now: clock.Now, ttl: time.Hour, refresh: time.Hour}
	if _, err := x.lookup(context.Background(), signedFor(t, "p", "read", "", "token-of-a", nil), allowAll); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := x.lookup(ctx, signedFor(t, "p", "read", "", "forged", nil), allowAll); err != context.Canceled {
		t.Fatalf("a miss inside the refresh window: %v, want it to wait (here: canceled)", err)
	}
	if lists, _ := res.counts(); lists != 1 {
		t.Fatalf("%d lists; want 1", lists)
	}
}

// TestFileSigMatchesEnvd: the index's incremental check agrees with envd's
// signature for every shape of input, and only for the right token,
// operation and expiration.
func TestFileSigMatchesEnvd(t *testing.T) {
	exp := int64(1234567890)
	other := exp + 1
	for _, path := range []string{"", "a", strings.Repeat("x", 55), strings.Repeat("y", 64), strings.Repeat("z", 5000), "/home/user/ü.html"} {
		for _, user := range []string{"", "user", "root"} {
			for _, e := range []*int64{nil, &exp} {
				t.Run(fmt.Sprintf("path%d/%s/exp%v", len(path), user, e != nil), func(t *testing.T) {
					f := signedFor(t, path, "read", user, "tok", e)
					if !f.matches("tok") {
						t.Fatal("the signing token does not match")
					}
					if f.matches("tok2") || f.matches("to") {
						t.Fatal("another token matches")
					}
					if g, _ := newFileSig(path, "write", user, e, envdapi.FileSignature(path, "read", user, "tok", e)); g.matches("tok") {
						t.Fatal("a read signature matches a write")
					}
					if g, _ := newFileSig(path, "read", user, &other, envdapi.FileSignature(path, "read", user, "tok", e)); g.matches("tok") {
						t.Fatal("another expiration matches")
					}
				})
			}
		}
	}
	for _, bad := range []string{"", "v1_", "v2_abc", "v1_!!!", "v1_" + strings.Repeat("A", 42)} {
		if _, ok := newFileSig("p", "read", "", nil, bad); ok {
			t.Errorf("signature %q accepted", bad)
		}
	}
}

// allowAll lets every lookup scan.
func allowAll() bool { return true }

// TestSignerIndexRemembersSignatures: a signature that matched once is
// found again through its one sandbox, without a pass over the others
// (the scan is refused, and the lookup still succeeds); the same digest
// under another path is not trusted from memory.
func TestSignerIndexRemembersSignatures(t *testing.T) {
	res := &countingResolver{}
	for i := range 100 {
		res.ids = append(res.ids, fmt.Sprintf("%032x", i))
	}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	x := &signerIndex{res: res, now: clock.Now, ttl: time.Hour, refresh: time.Nanosecond}
	ctx := context.Background()
	id := res.ids[42]
	sig := signedFor(t, "/home/user/report.html", "read", "user", "token-of-"+id, nil)
	if got, err := x.lookup(ctx, sig, allowAll); err != nil || got != id {
		t.Fatalf("first lookup = %q, %v; want %q", got, err, id)
	}
	noScan := func() bool { return false }
	for i := range 5 {
		if got, err := x.lookup(ctx, sig, noScan); err != nil || got != id {
			t.Fatalf("lookup %d of a remembered signature = %q, %v; want %q without a scan", i, got, err, id)
		}
	}
	// The same signature bytes on another path: the remembered sandbox's
	// token does not make it, and a scan is needed (refused here).
	moved, ok := newFileSig("/etc/shadow", "read", "user", nil, envdapi.FileSignature("/home/user/report.html", "read", "user", "token-of-"+id, nil))
	if !ok {
		t.Fatal("newFileSig refused a well-formed signature")
	}
	if got, err := x.lookup(ctx, moved, noScan); err != errScanLimited || got != "" {
		t.Fatalf("a remembered digest on another path = %q, %v; want errScanLimited", got, err)
	}
}

// TestSignedURLScansLimitedPerClient: forged signatures from one client
// are answered 429 with Retry-After once its scans are used up, while
// another client is still served (502: no sandbox signed its URL).
func TestSignedURLScansLimitedPerClient(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	h, err := New(Config{Domain: "capsule.test", Resolver: nilResolver{}, Now: clock.Now,
		SignerRefresh: time.Nanosecond, ScanLimit: auth.RateLimit{Burst: 3, Interval: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	forged := func(client string, i int) *httptest.ResponseRecorder {
		sig := envdapi.FileSignature("/etc/passwd", "read", "", fmt.Sprintf("guess-%d", i), nil)
		r := httptest.NewRequest(http.MethodGet, "/files?path=/etc/passwd&signature="+url.QueryEscape(sig), nil)
		r.RemoteAddr = client + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for i := range 3 {
		if w := forged("192.0.2.1", i); w.Code != http.StatusBadGateway {
			t.Fatalf("forged URL %d within the burst: %d, want 502", i, w.Code)
		}
	}
	w := forged("192.0.2.1", 3)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("forged URL past the burst: %d (Retry-After %q), want 429 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if w := forged("192.0.2.2", 0); w.Code != http.StatusBadGateway {
		t.Fatalf("another client: %d, want 502", w.Code)
	}
}
