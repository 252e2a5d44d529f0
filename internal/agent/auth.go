package agent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/agentproxy"
)

// Verifier decides whether a bearer token may call the agent. It is the
// seam for host registration: a JWT verifier (tokens issued to the control
// plane, with expiry and rotation) will replace StaticToken without
// changing anything else.
type Verifier interface {
	// Verify returns nil when token may call, an error otherwise. The
	// error is logged, never sent to the caller.
	Verify(ctx context.Context, token string) error
}

// MinTokenLength is the shortest shared secret StaticToken accepts.
const MinTokenLength = 16

// ErrBadToken is StaticToken's answer to a wrong token.
var ErrBadToken = errors.New("wrong bearer token")

// StaticToken verifies tokens against one shared secret. Comparisons take
// the same time whatever the token: both sides are hashed to a fixed length
// first and compared in constant time.
type StaticToken struct {
	sum [sha256.Size]byte
}

// NewStaticToken returns a verifier of secret, which must be at least
// MinTokenLength bytes long.
func NewStaticToken(secret string) (*StaticToken, error) {
	if len(secret) < MinTokenLength {
		return nil, fmt.Errorf("agent token: at least %d characters are required", MinTokenLength)
	}
	return &StaticToken{sum: sha256.Sum256([]byte(secret))}, nil
}

// Verify implements Verifier.
func (s *StaticToken) Verify(_ context.Context, token string) error {
	got := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(got[:], s.sum[:]) != 1 {
		return ErrBadToken
	}
	return nil
}

// bearerToken extracts the token of an "Authorization: Bearer <token>"
// header (the scheme is case-insensitive).
func bearerToken(h http.Header) (string, bool) {
	scheme, token, ok := strings.Cut(h.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// authInterceptor refuses every call without a verified bearer token,
// before the handler runs or reads a message.
type authInterceptor struct {
	v   Verifier
	log *slog.Logger
	// certAuth: the caller was authenticated by its client certificate
	// before the request reached the handler (Agent.ServeHTTP).
	certAuth bool
}

func (a *authInterceptor) check(ctx context.Context, spec connect.Spec, peer connect.Peer, h http.Header) error {
	if a.certAuth {
		return nil
	}
	token, ok := bearerToken(h)
	var err error
	if !ok {
		err = errors.New("no bearer token")
	} else {
		err = a.v.Verify(ctx, token)
	}
	if err != nil {
		a.log.WarnContext(ctx, "unauthenticated call refused",
			"procedure", spec.Procedure, "peer", peer.Addr, "reason", err)
		return connect.NewError(connect.CodeUnauthenticated, nil)
	}
	return nil
}

func (a *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		if err := a.check(ctx, req.Spec(), req.Peer(), req.Header()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := a.check(ctx, conn.Spec(), conn.Peer(), conn.RequestHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// refuseConn answers a request whose connection did not authenticate the
// control plane (Config.ClientCertAuth): traffic with the proxy's error
// body, RPCs with Connect's unauthenticated error (HTTP 401).
func (a *Agent) refuseConn(w http.ResponseWriter, r *http.Request, reason error) {
	a.log.WarnContext(r.Context(), "request refused: no control-plane client certificate", "remote", r.RemoteAddr, "reason", reason)
	if r.Header.Get(agentproxy.SandboxHeader) != "" {
		agentproxy.WriteError(w, http.StatusUnauthorized, "", 0, "unauthenticated")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write([]byte(`{"code":"unauthenticated","message":"a client certificate of the control plane is required"}`))
}
