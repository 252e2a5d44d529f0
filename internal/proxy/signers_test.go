package proxy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

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
			got, err := x.lookup(ctx, signedFor(t, fmt.Sprintf("/home/user/f%d.html", i), "read", "user", "token-of-"+id, nil))
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
		got, err := x.lookup(ctx, signedFor(t, "out.txt", "write", "", "token-of-"+id, &exp))
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
			_, err := x.lookup(ctx, signedFor(t, "/etc/passwd", "read", "", fmt.Sprintf("guess-%d", i), nil))
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
			if got, err := x.lookup(ctx, signedFor(t, "a", "read", "", "token-of-"+id, nil)); err != nil || got != id {
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
		if got, err := x.lookup(ctx, signedFor(t, "a", "read", "", "token-of-"+id, nil)); err != ErrNotFound {
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
	if _, err := x.lookup(context.Background(), signedFor(t, "p", "read", "", "token-of-a", nil)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := x.lookup(ctx, signedFor(t, "p", "read", "", "forged", nil)); err != context.Canceled {
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
