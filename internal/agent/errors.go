package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/errdefs/errconnect"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// classify says which Connect code err deserves and whether its message
// may go to the caller. conflict is the code of sandbox.ErrConflict, which
// means "already exists" when creating and "wrong state" otherwise. Errors
// that are not classified are internal: their details stay in the log.
func classify(err error, conflict connect.Code) (code connect.Code, public bool) {
	var ce *connect.Error
	var se *envdclient.StatusError
	switch {
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled, true
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded, true
	case errors.Is(err, sandbox.ErrCorrupt):
		// A replicated template's data did not match its hash.
		return connect.CodeDataLoss, true
	case errors.Is(err, sandbox.ErrConflict):
		return conflict, true
	case errors.Is(err, sandbox.ErrNotFound), errors.Is(err, sandbox.ErrInvalid),
		errors.Is(err, sandbox.ErrCapacity), errors.Is(err, sandbox.ErrNoSpace):
		// The manager's classes, sent with the one codec (errconnect):
		// NotFound, InvalidArgument, ResourceExhausted.
		return sandboxCode(err), true
	case errors.As(err, &ce):
		// An envd RPC answer (or one of ours): the codes that describe the
		// caller's request keep their meaning.
		switch ce.Code() {
		case connect.CodeNotFound, connect.CodeInvalidArgument, connect.CodeFailedPrecondition,
			connect.CodeAlreadyExists, connect.CodePermissionDenied, connect.CodeOutOfRange,
			connect.CodeResourceExhausted, connect.CodeDeadlineExceeded, connect.CodeCanceled:
			return ce.Code(), true
		case connect.CodeUnauthenticated:
			// envd's answer to an unknown user: the agent always
			// presents the sandbox's access token.
			return connect.CodeInvalidArgument, true
		}
	case errors.As(err, &se):
		// An envd /files answer.
		switch se.Status {
		case http.StatusNotFound:
			return connect.CodeNotFound, true
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotAcceptable:
			// 401 here is an unknown user: the agent always sends the
			// sandbox's access token.
			return connect.CodeInvalidArgument, true
		case http.StatusForbidden:
			return connect.CodePermissionDenied, true
		case http.StatusConflict:
			return connect.CodeAlreadyExists, true
		case http.StatusInsufficientStorage, http.StatusRequestEntityTooLarge:
			return connect.CodeResourceExhausted, true
		}
	}
	return connect.CodeInternal, false
}

// sandboxCode is the Connect code of a sandbox manager error: that of the
// first of its sentinels err wraps, in the order classify always tested
// them.
func sandboxCode(err error) connect.Code {
	for _, s := range []error{sandbox.ErrNotFound, sandbox.ErrInvalid, sandbox.ErrCapacity, sandbox.ErrNoSpace} {
		if errors.Is(err, s) {
			code, _ := errconnect.Code(s)
			return code
		}
	}
	return connect.CodeInternal
}

// publicMessage is what the caller is told of a classified error.
func publicMessage(err error) error {
	var ce *connect.Error
	var se *envdclient.StatusError
	switch {
	case errors.As(err, &ce):
		return errors.New(ce.Message())
	case errors.As(err, &se):
		return fmt.Errorf("%s %s: %s", se.Op, se.Path, se.Msg)
	}
	return err
}

// fail turns an error of a handler into the error the caller gets (see
// classify). Internal errors are logged with a fresh error ID, which is all
// the caller learns.
func (a *Agent) fail(ctx context.Context, err error, conflict connect.Code) error {
	if err == nil {
		return nil
	}
	procedure := ""
	if ci, ok := connect.CallInfoForHandlerContext(ctx); ok {
		procedure = ci.Spec().Procedure
	}
	code, public := classify(err, conflict)
	if public {
		a.log.DebugContext(ctx, "call refused", "procedure", procedure, "code", code, "err", err)
		ce := connect.NewError(code, publicMessage(err))
		if errors.Is(err, sandbox.ErrNoSpace) {
			// ResourceExhausted either way; the class tells a full data
			// disk from exhausted CPU or memory (agentclient.ErrNoSpace).
			ce.Meta().Set(agentapi.ErrorClassHeader, agentapi.ClassNoSpace)
		}
		return ce
	}
	id := errorID()
	a.log.ErrorContext(ctx, "call failed", "procedure", procedure, "error_id", id, "err", err)
	return connect.NewError(connect.CodeInternal, fmt.Errorf("internal error (error id %s)", id))
}

// failState is fail for calls where a conflict means a sandbox in the
// wrong state.
func (a *Agent) failState(ctx context.Context, err error) error {
	return a.fail(ctx, err, connect.CodeFailedPrecondition)
}

func errorID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// invalid is an InvalidArgument error of the agent's own checks.
func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}
