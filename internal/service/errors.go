package service

import (
	"errors"
	"fmt"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
)

// Sentinel errors; test with errors.Is. The message of an error that wraps
// one of them is meant for the caller (no internal detail).
var (
	// ErrNotFound: the resource does not exist or belongs to another team.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the resource exists already or is in the wrong state.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrUnauthorized: no or bad credentials.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: authenticated, but not allowed to.
	ErrForbidden = errors.New("forbidden")
	// ErrQuota: the team's quota refuses the request.
	ErrQuota = errors.New("quota exceeded")
	// ErrUnavailable: the sandbox host cannot serve the request now (no
	// capacity, unreachable).
	ErrUnavailable = errors.New("unavailable")
	// ErrInsufficientStorage: the sandbox host's data disk is at its
	// headroom; nothing was written (HTTP 507).
	ErrInsufficientStorage = errors.New("insufficient storage")
)

// Error is a classified error: Kind is one of the sentinels, Msg is safe to
// show to the caller, Err (optional) the cause, kept for logs.
type Error struct {
	Kind error
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

// Unwrap exposes both the kind and the cause to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// PublicMessage returns the message of err that may be shown to the
// caller, and false when err is not classified (an internal error).
func PublicMessage(err error) (string, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Msg, true
	}
	return "", false
}

func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// notFound turns a store.ErrNotFound into ErrNotFound (with what), and
// wraps any other error with context.
func notFound(err error, what string) error {
	if errors.Is(err, store.ErrNotFound) {
		return &Error{Kind: ErrNotFound, Msg: what + " not found", Err: err}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// agentError classifies an agent failure for the caller.
func agentError(err error, op string) error {
	switch {
	case errors.Is(err, agentclient.ErrNoSpace):
		return &Error{Kind: ErrInsufficientStorage, Msg: "the sandbox host is low on disk space: " + op + " refused, nothing was written", Err: err}
	case errors.Is(err, agentclient.ErrCapacity):
		return &Error{Kind: ErrUnavailable, Msg: "the sandbox host has no capacity left", Err: err}
	case errors.Is(err, agentclient.ErrUnavailable):
		return &Error{Kind: ErrUnavailable, Msg: "the sandbox host is unreachable", Err: err}
	case errors.Is(err, agentclient.ErrNotFound):
		return &Error{Kind: ErrNotFound, Msg: "not found on the sandbox host", Err: err}
	case errors.Is(err, agentclient.ErrInvalid):
		return &Error{Kind: ErrInvalid, Msg: "the sandbox host refused the request as invalid", Err: err}
	case errors.Is(err, agentclient.ErrConflict):
		return &Error{Kind: ErrConflict, Msg: "the sandbox is in the wrong state", Err: err}
	}
	return fmt.Errorf("agent %s: %w", op, err)
}

// PublicText is err's public message, or "internal error" when it has
// none (audit metadata must not carry internal details either).
func PublicText(err error) string {
	if msg, ok := PublicMessage(err); ok {
		return msg
	}
	return "internal error"
}
