package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding"
	"encoding/base64"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A signed file URL built on E2B_SANDBOX_URL names no sandbox: its only
// link to one is the signature, SHA-256("path:operation:username:TOKEN
// [:expiration]") of the sandbox's envd token (envdapi.FileSignature), which
// cannot be inverted. Finding its sandbox means trying the running
// sandboxes' tokens; the signer index bounds what that costs an
// unauthenticated request:
//
//   - no HMAC: each sandbox's envd token (an HMAC of its ID) is computed
//     once, when the index first sees the sandbox, and kept while it runs;
//   - no database query: the index is reloaded at most every SignerTTL by
//     traffic, and a URL that matches nothing reloads it at most once per
//     SignerRefresh (waiting for that), however many such URLs arrive;
//   - one SHA-256 pass over the request's path, username and operation,
//     whose state is then extended by each token: a candidate costs one or
//     two SHA-256 blocks (about a microsecond), whatever the path's length;
//   - a signature seen before (a browser fetching a download again, range
//     requests, an upload retried) is remembered with its sandbox and
//     checked against that one token: O(1);
//   - only a signature never seen costs a pass over the running sandboxes
//     (about 1 ms at 1,024 of them), and such passes are rate-limited per
//     client address (the scan limiter): a client that sends forged
//     signatures gets 429 long before it costs the host anything.

// signer is a running sandbox and its envd token.
type signer struct{ id, token string }

// signerIndex holds the running sandboxes' envd tokens.
type signerIndex struct {
	res          Resolver
	now          func() time.Time
	ttl, refresh time.Duration

	mu      sync.Mutex // guards signers and loaded
	signers []signer   // replaced, never modified
	loaded  time.Time  // zero: never loaded

	reload sync.Mutex // one reload at a time

	// recent maps the digests of signatures that matched to their sandbox
	// (guarded by mu; emptied when it reaches maxRecentSigs).
	recent map[[sha256.Size]byte]string
}

// maxRecentSigs bounds the signatures the index remembers.
const maxRecentSigs = 4096

// errScanLimited: the client may not make the index scan now.
var errScanLimited = errors.New("proxy: too many signed URLs that name no known signature")

// lookup returns the ID of the running sandbox whose token makes sig
// (ErrNotFound when none does). allowScan is asked before a pass over
// every running sandbox; when it says no, lookup fails with
// errScanLimited.
func (x *signerIndex) lookup(ctx context.Context, sig fileSig, allowScan func() bool) (string, error) {
	signers, loaded := x.snapshot()
	if loaded.IsZero() || x.now().Sub(loaded) >= x.ttl {
		var err error
		if signers, loaded, err = x.load(ctx, loaded); err != nil {
			return "", err
		}
	}
	if id := x.remembered(sig, signers); id != "" {
		return id, nil
	}
	if !allowScan() {
		return "", errScanLimited
	}
	if id := sig.find(signers); id != "" {
		x.remember(sig, id)
		return id, nil
	}
	// A sandbox started since the last load? One more look after the next
	// reload allowed.
	if wait := x.refresh - x.now().Sub(loaded); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-t.C:
		}
	}
	signers, _, err := x.load(ctx, loaded)
	if err != nil {
		return "", err
	}
	if id := sig.find(signers); id != "" {
		x.remember(sig, id)
		return id, nil
	}
	return "", ErrNotFound
}

// remembered returns the sandbox a signature with sig's digest matched
// before, when it is still running and its token makes sig ("" otherwise).
func (x *signerIndex) remembered(sig fileSig, signers []signer) string {
	x.mu.Lock()
	id, ok := x.recent[sig.want]
	x.mu.Unlock()
	if !ok {
		return ""
	}
	for _, s := range signers {
		if s.id == id {
			if sig.matches(s.token) {
				return id
			}
			break
		}
	}
	return ""
}

// remember records that sig is the signature of sandbox id.
func (x *signerIndex) remember(sig fileSig, id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.recent == nil || len(x.recent) >= maxRecentSigs {
		x.recent = make(map[[sha256.Size]byte]string)
	}
	x.recent[sig.want] = id
}

func (x *signerIndex) snapshot() ([]signer, time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.signers, x.loaded
}

// load reloads the index unless it was reloaded since seen (then that
// load serves): the requests that wait together share one query.
func (x *signerIndex) load(ctx context.Context, seen time.Time) ([]signer, time.Time, error) {
	x.reload.Lock()
	defer x.reload.Unlock()
	signers, loaded := x.snapshot()
	if !loaded.Equal(seen) {
		return signers, loaded, nil
	}
	ids, err := x.res.RunningSandboxes(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	known := make(map[string]string, len(signers))
	for _, s := range signers {
		known[s.id] = s.token
	}
	next := make([]signer, 0, len(ids))
	for _, id := range ids {
		tok, ok := known[id]
		if !ok {
			tok = x.res.EnvdToken(id)
		}
		next = append(next, signer{id, tok})
	}
	now := x.now()
	if !now.After(loaded) {
		// A clock that did not move still marks a new load.
		now = loaded.Add(time.Nanosecond)
	}
	x.mu.Lock()
	x.signers, x.loaded = next, now
	x.mu.Unlock()
	return next, now, nil
}

// fileSig is a signed /files request, ready to be tried against tokens.
type fileSig struct {
	state  []byte   // SHA-256 state after "path:operation:username:"
	suffix string   // ":expiration", or ""
	want   [32]byte // the signature's digest
}

// newFileSig prepares the check of signature (false when it cannot be a
// v1 signature at all: then no token makes it).
func newFileSig(path, operation, username string, expiration *int64, signature string) (fileSig, bool) {
	enc, ok := strings.CutPrefix(signature, "v1_")
	if !ok {
		return fileSig{}, false
	}
	raw, err := base64.RawStdEncoding.Strict().DecodeString(enc)
	if err != nil || len(raw) != sha256.Size {
		return fileSig{}, false
	}
	h := sha256.New()
	_, _ = io.WriteString(h, path+":"+operation+":"+username+":")
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return fileSig{}, false
	}
	f := fileSig{state: state}
	copy(f.want[:], raw)
	if expiration != nil {
		f.suffix = ":" + strconv.FormatInt(*expiration, 10)
	}
	return f, true
}

// matches reports whether token makes the signature.
func (f fileSig) matches(token string) bool {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(f.state); err != nil {
		return false
	}
	_, _ = io.WriteString(h, token)
	_, _ = io.WriteString(h, f.suffix)
	var sum [sha256.Size]byte
	return subtle.ConstantTimeCompare(h.Sum(sum[:0]), f.want[:]) == 1
}

// find returns the signer whose token makes the signature ("" when none).
func (f fileSig) find(signers []signer) string {
	for _, s := range signers {
		if f.matches(s.token) {
			return s.id
		}
	}
	return ""
}
