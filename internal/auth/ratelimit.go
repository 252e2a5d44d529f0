package auth

import (
	"container/list"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RateLimit is a token bucket: it holds at most Burst tokens, one request
// takes one token, and one token comes back every Interval. So a client may
// send Burst requests at once, then one per Interval.
type RateLimit struct {
	Burst    int
	Interval time.Duration
}

// Validate reports whether the limit is usable: Burst ≥ 1, Interval > 0.
func (r RateLimit) Validate() error {
	if r.Burst < 1 || r.Interval <= 0 {
		return fmt.Errorf("auth: rate limit needs burst ≥ 1 and interval > 0 (got %d, %s)", r.Burst, r.Interval)
	}
	return nil
}

// Suggested limits for the unauthenticated auth endpoints.
var (
	// LoginLimitPerIP: 20 attempts at once, then 1 every 6 s (10/min).
	LoginLimitPerIP = RateLimit{Burst: 20, Interval: 6 * time.Second}
	// LoginLimitPerEmail: 5 attempts at once, then 1 per minute, which
	// caps online guessing of one account's password whatever the number
	// of source addresses.
	LoginLimitPerEmail = RateLimit{Burst: 5, Interval: time.Minute}
	// SignupLimitPerIP: 5 signups at once, then 1 every 10 minutes.
	SignupLimitPerIP = RateLimit{Burst: 5, Interval: 10 * time.Minute}
	// UserSearchLimitPerUser: 20 searches at once, then 1 every 3 s
	// (20/min) per user, which bounds how fast a session can enumerate
	// registered e-mail addresses by prefix.
	UserSearchLimitPerUser = RateLimit{Burst: 20, Interval: 3 * time.Second}
)

// DefaultMaxKeys is the default bound on the number of keys a Limiter
// tracks.
const DefaultMaxKeys = 100_000

// LimiterConfig configures a Limiter.
type LimiterConfig struct {
	// Limit is the bucket of each key.
	Limit RateLimit
	// MaxKeys bounds memory: when this many keys are tracked and none is
	// idle, the least recently used key is forgotten (its bucket starts
	// full again). DefaultMaxKeys when zero.
	MaxKeys int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Limiter is an in-memory, keyed token-bucket rate limiter (keys such as
// "ip:203.0.113.7" or "email:a@b.c"). Each bucket is kept as the time at
// which it will be full again (the GCRA form of a token bucket: one time
// value per key, exact integer arithmetic, no background goroutine). Keys
// whose bucket has refilled are forgotten, since a full bucket is the same
// as no bucket. A Limiter is local to one process; it is safe for
// concurrent use.
type Limiter struct {
	limit   RateLimit
	maxKeys int
	now     func() time.Time

	mu    sync.Mutex
	byKey map[string]*list.Element // of *bucket
	lru   *list.List               // front: most recently used
}

// bucket is one key's state.
type bucket struct {
	key string
	// full is when the bucket will hold Burst tokens again; the tokens
	// available at t are Burst - max(0, full-t)/Interval.
	full time.Time
	// last is the time of the key's latest request; a key idle for
	// Burst×Interval is full and may be forgotten.
	last time.Time
}

// NewLimiter checks cfg and returns an empty limiter.
func NewLimiter(cfg LimiterConfig) (*Limiter, error) {
	if err := cfg.Limit.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxKeys < 0 {
		return nil, errors.New("auth: MaxKeys must not be negative")
	}
	l := &Limiter{
		limit:   cfg.Limit,
		maxKeys: cfg.MaxKeys,
		now:     cfg.Now,
		byKey:   map[string]*list.Element{},
		lru:     list.New(),
	}
	if l.maxKeys == 0 {
		l.maxKeys = DefaultMaxKeys
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l, nil
}

// Allow takes one token from key's bucket. It returns true when there was
// one; otherwise false and how long until a token is available (the value
// for Retry-After).
func (l *Limiter) Allow(key string) (allowed bool, retryAfter time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evictIdle(now)

	var b *bucket
	if e, ok := l.byKey[key]; ok {
		b = e.Value.(*bucket)
		l.lru.MoveToFront(e)
	} else {
		if l.lru.Len() >= l.maxKeys {
			l.remove(l.lru.Back())
		}
		b = &bucket{key: key, full: now}
		l.byKey[key] = l.lru.PushFront(b)
	}
	b.last = now

	full := b.full
	if full.Before(now) {
		full = now
	}
	// Tokens are missing for (full-now)/Interval; taking one more must not
	// leave the bucket more than Burst tokens short.
	tolerance := time.Duration(l.limit.Burst-1) * l.limit.Interval
	if debt := full.Sub(now); debt > tolerance {
		return false, debt - tolerance
	}
	b.full = full.Add(l.limit.Interval)
	return true, 0
}

// Reset forgets key, refilling its bucket (for example after a successful
// login, for a per-account limit of failures).
func (l *Limiter) Reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.byKey[key]; ok {
		l.remove(e)
	}
}

// Len returns the number of keys currently tracked.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// evictIdle forgets, from the least recently used end, every key idle long
// enough to be full again. Each key is removed at most once, so the cost is
// amortized O(1) per Allow.
func (l *Limiter) evictIdle(now time.Time) {
	idle := time.Duration(l.limit.Burst) * l.limit.Interval
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		if now.Sub(e.Value.(*bucket).last) < idle {
			return
		}
		l.remove(e)
	}
}

// remove forgets the key of element e.
func (l *Limiter) remove(e *list.Element) {
	delete(l.byKey, e.Value.(*bucket).key)
	l.lru.Remove(e)
}

// RetryAfterSeconds converts a wait into the integer seconds of a
// Retry-After header: rounded up, at least 1.
func RetryAfterSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		return 1
	}
	return s
}

// errorBody is the API's JSON error shape; code equals the HTTP status.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// WriteTooManyRequests answers 429 with a Retry-After header (whole
// seconds, see RetryAfterSeconds) and the JSON error body
// {"code":429,"message":"…"}.
func WriteTooManyRequests(w http.ResponseWriter, retryAfter time.Duration) {
	secs := RetryAfterSeconds(retryAfter)
	body, _ := json.Marshal(errorBody{
		Code:    http.StatusTooManyRequests,
		Message: fmt.Sprintf("too many requests, retry in %d seconds", secs),
	})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Retry-After", strconv.Itoa(secs))
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = w.Write(append(body, '\n'))
}

// Middleware returns net/http middleware that takes a token from the
// bucket key(r) before calling the next handler, and answers with
// WriteTooManyRequests when there is none. When key returns ok=false the
// request is not limited. Limits that need the request body (per e-mail
// address) are applied in the handler with Allow and WriteTooManyRequests.
func (l *Limiter) Middleware(key func(r *http.Request) (k string, ok bool)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if k, ok := key(r); ok {
				if allowed, wait := l.Allow(k); !allowed {
					WriteTooManyRequests(w, wait)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// TeamKey is the Limiter key of a team's requests: the E2B API and the
// /v1 sandbox lifecycle routes take their tokens from one bucket per team
// when they share a Limiter.
func TeamKey(team string) string { return "team:" + team }

// IPKeyFunc returns a key function for Middleware that limits per client
// address (see ClientIP and IPKey). Requests whose address cannot be
// determined share the key "ip:unknown".
func IPKeyFunc(trustedProxies []netip.Prefix) func(r *http.Request) (string, bool) {
	return func(r *http.Request) (string, bool) {
		return IPKey(ClientIP(r, trustedProxies)), true
	}
}

// ClientIP returns the address of the client of r. It is the peer address
// (r.RemoteAddr) unless the peer is in trustedProxies; then X-Forwarded-For
// is read right to left, skipping trusted proxies, and the first address
// not among them is the client. Entries that a client wrote itself (left of
// that one) are never believed. The Forwarded header (RFC 7239) is not read:
// a proxy that appends to X-Forwarded-For passes a client's Forwarded
// through unchanged (see the package doc). The zero Addr means unknown.
func ClientIP(r *http.Request, trustedProxies []netip.Prefix) netip.Addr {
	peer := parseRemoteAddr(r.RemoteAddr)
	if !peer.IsValid() || !inPrefixes(peer, trustedProxies) {
		return peer
	}
	client := peer
	hops := r.Header.Values("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				// A trusted proxy writes valid addresses; stop at the
				// last hop we can vouch for.
				return client
			}
			client = a.Unmap()
			if !inPrefixes(client, trustedProxies) {
				return client
			}
		}
	}
	return client
}

// parseRemoteAddr parses "host:port" or a bare address.
func parseRemoteAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

// inPrefixes reports whether a is in one of ps.
func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// IPKey returns the rate-limit key of a client address: "ip:" and the IPv4
// address, or the IPv6 /64 network (one subscriber usually holds a whole
// /64, so limiting single IPv6 addresses would be trivial to evade).
func IPKey(a netip.Addr) string {
	if !a.IsValid() {
		return "ip:unknown"
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + a.String()
}

// EmailKey returns the rate-limit key of an e-mail address: trimmed and
// lower-cased so that case variants share one bucket.
func EmailKey(email string) string {
	return "email:" + strings.ToLower(strings.TrimSpace(email))
}
