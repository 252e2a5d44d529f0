package capsule

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// RetryPolicy says how refused requests are retried (see the package
// documentation).
type RetryPolicy struct {
	// MaxRetries is how many times a request is sent again (0: never).
	MaxRetries int
	// BaseDelay is the first back-off; each retry doubles it, up to
	// MaxDelay, with ±50 % jitter.
	BaseDelay time.Duration
	MaxDelay  time.Duration
	// MaxRetryAfter caps the platform's Retry-After: a longer wait is
	// not waited for; the refusal is returned.
	MaxRetryAfter time.Duration
}

// DefaultRetryPolicy is the policy of a client made without WithRetry.
var DefaultRetryPolicy = RetryPolicy{MaxRetries: 3, BaseDelay: 250 * time.Millisecond, MaxDelay: 8 * time.Second,
	MaxRetryAfter: 60 * time.Second}

// retryTransport retries 503s and rate-limited 429s (those with
// Retry-After) of requests whose body can be sent again.
type retryTransport struct {
	next   http.RoundTripper
	policy RetryPolicy
	// sleep waits d or until ctx ends (a seam for tests).
	sleep func(ctx context.Context, d time.Duration) error
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retryable reports whether resp's refusal is worth another try.
func retryable(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusServiceUnavailable:
		return true
	case http.StatusTooManyRequests:
		// Without Retry-After it is a quota, which waiting does not lift.
		return resp.Header.Get("Retry-After") != ""
	}
	return false
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	delay := t.policy.BaseDelay
	for attempt := 0; ; attempt++ {
		resp, err := t.next.RoundTrip(req)
		if err != nil || !retryable(resp) || attempt >= t.policy.MaxRetries {
			return resp, err
		}
		if req.Body != nil && req.GetBody == nil {
			return resp, nil // the body was consumed and cannot be replayed
		}
		wait := jitter(delay)
		if ra := retryAfter(resp.Header, time.Now()); ra > 0 {
			if ra > t.policy.MaxRetryAfter {
				return resp, nil
			}
			wait = ra
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return resp, nil // the answer now beats a certain timeout
		}
		// Drain a little so that the connection can be reused.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		resp.Body.Close()
		if err := t.sleep(ctx, wait); err != nil {
			return nil, err
		}
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req = req.Clone(ctx)
			req.Body = body
		}
		delay = min(2*delay, t.policy.MaxDelay)
	}
}

// jitter returns d ±50 %.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d)
}
