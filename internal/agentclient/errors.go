package agentclient

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/errdefs/errconnect"
)

// Error classes of agent failures, for errors.Is; each wraps its errdefs
// class (the agent's own: unauthenticated, internal, have none).
var (
	// ErrNotFound: the sandbox, template, process or file does not exist.
	ErrNotFound = errdefs.Sentinel("agent: not found", errdefs.ErrNotFound)
	// ErrAlreadyExists: a sandbox with that ID already exists.
	ErrAlreadyExists = errdefs.Sentinel("agent: already exists", errdefs.ErrConflict)
	// ErrConflict: the sandbox is in the wrong state for the call.
	ErrConflict = errdefs.Sentinel("agent: wrong state", errdefs.ErrConflict)
	// ErrInvalid: the request is malformed.
	ErrInvalid = errdefs.Sentinel("agent: invalid request", errdefs.ErrInvalid)
	// ErrCapacity: the host has no room for the request.
	ErrCapacity = errdefs.Sentinel("agent: host capacity exhausted", errdefs.ErrQuota)
	// ErrNoSpace: the host's data disk is at its headroom (a create,
	// pause or snapshot would fill it); nothing was written.
	ErrNoSpace = errdefs.Sentinel("agent: insufficient storage", errdefs.ErrInsufficientStorage)
	// ErrPermissionDenied: the sandbox's user may not do that (files).
	ErrPermissionDenied = errdefs.Sentinel("agent: permission denied", errdefs.ErrForbidden)
	// ErrUnauthenticated: the agent refused the bearer token.
	ErrUnauthenticated = errors.New("agent: unauthenticated")
	// ErrUnavailable: the agent cannot be reached.
	ErrUnavailable = errdefs.Sentinel("agent: unavailable", errdefs.ErrUnavailable)
	// ErrInternal: the agent failed; its log explains the error ID.
	ErrInternal = errors.New("agent: internal error")
)

// Error is an agent failure: Kind is its class (one of the Err… values
// above, errors.ErrUnsupported for an RPC the agent does not implement, or
// context.Canceled / context.DeadlineExceeded) and Err the Connect error.
type Error struct {
	Kind error
	Err  *connect.Error
}

func (e *Error) Error() string { return e.Err.Error() }

// Unwrap makes both the class and the Connect error visible to errors.Is
// and errors.As.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// ErrorClassHeader is the error metadata key by which the agent refines a
// Connect code: ClassNoSpace on ResourceExhausted is ErrNoSpace. The
// contract is package agentapi's, which the agent imports.
const (
	ErrorClassHeader = agentapi.ErrorClassHeader
	ClassNoSpace     = agentapi.ClassNoSpace
)

// byClass names this package's sentinel of each errdefs class, which the
// one Connect codec (errconnect.Class) reads a code as.
var byClass = map[error]error{
	errdefs.ErrNotFound:     ErrNotFound,
	errdefs.ErrConflict:     ErrConflict,
	errdefs.ErrInvalid:      ErrInvalid,
	errdefs.ErrQuota:        ErrCapacity,
	errdefs.ErrForbidden:    ErrPermissionDenied,
	errdefs.ErrUnauthorized: ErrUnauthenticated,
	errdefs.ErrUnavailable:  ErrUnavailable,
}

// kindOf is the class of a Connect error: the codec's class, refined
// where the agent says more (an existing sandbox, a full data disk), and
// the codes of no class (an RPC not implemented, a cancelled or timed out
// call, internal failures).
func kindOf(ce *connect.Error) error {
	switch ce.Code() {
	case connect.CodeAlreadyExists:
		return ErrAlreadyExists
	case connect.CodeResourceExhausted:
		if ce.Meta().Get(ErrorClassHeader) == ClassNoSpace {
			return ErrNoSpace
		}
	case connect.CodeUnimplemented:
		return errors.ErrUnsupported
	case connect.CodeCanceled:
		return context.Canceled
	case connect.CodeDeadlineExceeded:
		return context.DeadlineExceeded
	}
	if kind, ok := byClass[errconnect.Class(ce.Code())]; ok {
		return kind
	}
	return ErrInternal
}

// Classify returns err as an *Error of its class. nil, io.EOF (the end of
// a stream) and errors that are already classified are returned as they
// are; an error that is not a Connect error is ErrInternal.
func Classify(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		ce = connect.NewError(connect.CodeUnknown, err)
	}
	return &Error{Kind: kindOf(ce), Err: ce}
}
