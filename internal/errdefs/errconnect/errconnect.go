// Package errconnect is the Connect codec of the error classes of package
// errdefs: the code a class is sent as (Code) and the class a code is
// read as (Class), used by the host agent to answer and by agentclient to
// read the answers. The agent refines ResourceExhausted with
// agentapi.ErrorClassHeader (a full data disk); that stays the agent's.
package errconnect

import (
	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/errdefs"
)

var codes = map[error]connect.Code{
	errdefs.ErrNotFound:            connect.CodeNotFound,
	errdefs.ErrConflict:            connect.CodeFailedPrecondition,
	errdefs.ErrInvalid:             connect.CodeInvalidArgument,
	errdefs.ErrUnauthorized:        connect.CodeUnauthenticated,
	errdefs.ErrForbidden:           connect.CodePermissionDenied,
	errdefs.ErrQuota:               connect.CodeResourceExhausted,
	errdefs.ErrUnavailable:         connect.CodeUnavailable,
	errdefs.ErrInsufficientStorage: connect.CodeResourceExhausted,
}

var classes = map[connect.Code]error{
	connect.CodeNotFound:           errdefs.ErrNotFound,
	connect.CodeAlreadyExists:      errdefs.ErrConflict,
	connect.CodeFailedPrecondition: errdefs.ErrConflict,
	connect.CodeAborted:            errdefs.ErrConflict,
	connect.CodeInvalidArgument:    errdefs.ErrInvalid,
	connect.CodeOutOfRange:         errdefs.ErrInvalid,
	connect.CodeResourceExhausted:  errdefs.ErrQuota,
	connect.CodePermissionDenied:   errdefs.ErrForbidden,
	connect.CodeUnauthenticated:    errdefs.ErrUnauthorized,
	connect.CodeUnavailable:        errdefs.ErrUnavailable,
}

// Code is the Connect code of err's class (errdefs.Class), and false when
// err has none.
func Code(err error) (connect.Code, bool) {
	c, ok := codes[errdefs.Class(err)]
	return c, ok
}

// Class is the class a Connect code is read as (AlreadyExists and Aborted
// are conflicts, OutOfRange is invalid), nil for the codes of no class
// (Internal, Unknown, Canceled…).
func Class(code connect.Code) error { return classes[code] }
