package service

import (
	"errors"
	"fmt"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/store"
)

// The error classes (package errdefs); test with errors.Is. The message
// of an *Error that wraps one of them is meant for the caller (no
// internal detail).
var (
	// ErrNotFound: the resource does not exist or belongs to another team.
	ErrNotFound = errdefs.ErrNotFound
	// ErrConflict: the resource exists already or is in the wrong state.
	ErrConflict = errdefs.ErrConflict
	// ErrInvalid: the request is malformed.
	ErrInvalid = errdefs.ErrInvalid
	// ErrUnauthorized: no or bad credentials.
	ErrUnauthorized = errdefs.ErrUnauthorized
	// ErrForbidden: authenticated, but not allowed to.
	ErrForbidden = errdefs.ErrForbidden
	// ErrQuota: the team's quota refuses the request.
	ErrQuota = errdefs.ErrQuota
	// ErrUnavailable: the sandbox host cannot serve the request now (no
	// capacity, unreachable).
	ErrUnavailable = errdefs.ErrUnavailable
	// ErrInsufficientStorage: the sandbox host's data disk is at its
	// headroom; nothing was written (HTTP 507).
	ErrInsufficientStorage = errdefs.ErrInsufficientStorage
)

// Error is a classified error (errdefs.Error): Kind is one of the classes,
// Msg is safe to show to the caller, Err (optional) the cause, kept for
// logs.
type Error = errdefs.Error

// PublicMessage returns the message of err that may be shown to the
// caller, and false when err is not classified (an internal error).
func PublicMessage(err error) (string, bool) { return errdefs.PublicMessage(err) }

func errorf(kind error, format string, args ...any) error { return errdefs.Newf(kind, format, args...) }

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
