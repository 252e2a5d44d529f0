package agentclient

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/agentapi"
)

// Error classes of agent failures, for errors.Is.
var (
	// ErrNotFound: the sandbox, template, process or file does not exist.
	ErrNotFound = errors.New("agent: not found")
	// ErrAlreadyExists: a sandbox with that ID already exists.
	ErrAlreadyExists = errors.New("agent: already exists")
	// ErrConflict: the sandbox is in the wrong state for the call.
	ErrConflict = errors.New("agent: wrong state")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("agent: invalid request")
	// ErrCapacity: the host has no room for the request.
	ErrCapacity = errors.New("agent: host capacity exhausted")
	// ErrNoSpace: the host's data disk is at its headroom (a create,
	// pause or snapshot would fill it); nothing was written.
	ErrNoSpace = errors.New("agent: insufficient storage")
	// ErrPermissionDenied: the sandbox's user may not do that (files).
	ErrPermissionDenied = errors.New("agent: permission denied")
	// ErrUnauthenticated: the agent refused the bearer token.
	ErrUnauthenticated = errors.New("agent: unauthenticated")
	// ErrUnavailable: the agent cannot be reached.
	ErrUnavailable = errors.New("agent: unavailable")
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

// kinds maps Connect codes to classes.
var kinds = map[connect.Code]error{
	connect.CodeNotFound:           ErrNotFound,
	connect.CodeAlreadyExists:      ErrAlreadyExists,
	connect.CodeFailedPrecondition: ErrConflict,
	connect.CodeAborted:            ErrConflict,
	connect.CodeInvalidArgument:    ErrInvalid,
	connect.CodeOutOfRange:         ErrInvalid,
	connect.CodeResourceExhausted:  ErrCapacity,
	connect.CodePermissionDenied:   ErrPermissionDenied,
	connect.CodeUnauthenticated:    ErrUnauthenticated,
	connect.CodeUnavailable:        ErrUnavailable,
	connect.CodeUnimplemented:      errors.ErrUnsupported,
	connect.CodeCanceled:           context.Canceled,
	connect.CodeDeadlineExceeded:   context.DeadlineExceeded,
	connect.CodeInternal:           ErrInternal,
	connect.CodeUnknown:            ErrInternal,
	connect.CodeDataLoss:           ErrInternal,
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
	kind, ok := kinds[ce.Code()]
	if !ok {
		kind = ErrInternal
	}
	if ce.Code() == connect.CodeResourceExhausted && ce.Meta().Get(ErrorClassHeader) == ClassNoSpace {
		kind = ErrNoSpace
	}
	return &Error{Kind: kind, Err: ce}
}
