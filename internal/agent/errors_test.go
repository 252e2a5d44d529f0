package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/sandbox"
)

func TestClassify(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("pause abc: %w", err) }
	envdErr := func(code connect.Code) error { return connect.NewError(code, errors.New("envd says no")) }
	filesErr := func(status int) error {
		return &envdclient.StatusError{Op: "read", Path: "/x", Status: status, Msg: "no"}
	}
	for _, tc := range []struct {
		name     string
		err      error
		conflict connect.Code
		code     connect.Code
		public   bool
	}{
		{"not found", wrap(sandbox.ErrNotFound), connect.CodeFailedPrecondition, connect.CodeNotFound, true},
		{"conflict: state", wrap(sandbox.ErrConflict), connect.CodeFailedPrecondition, connect.CodeFailedPrecondition, true},
		{"conflict: create", wrap(sandbox.ErrConflict), connect.CodeAlreadyExists, connect.CodeAlreadyExists, true},
		{"invalid", wrap(sandbox.ErrInvalid), connect.CodeFailedPrecondition, connect.CodeInvalidArgument, true},
		{"capacity", wrap(sandbox.ErrCapacity), connect.CodeFailedPrecondition, connect.CodeResourceExhausted, true},
		{"no space", wrap(sandbox.ErrNoSpace), connect.CodeFailedPrecondition, connect.CodeResourceExhausted, true},
		{"canceled", wrap(context.Canceled), connect.CodeFailedPrecondition, connect.CodeCanceled, true},
		{"deadline", wrap(context.DeadlineExceeded), connect.CodeFailedPrecondition, connect.CodeDeadlineExceeded, true},
		{"plain", errors.New("disk on fire"), connect.CodeFailedPrecondition, connect.CodeInternal, false},
		{"envd not found", envdErr(connect.CodeNotFound), connect.CodeFailedPrecondition, connect.CodeNotFound, true},
		{"envd invalid", envdErr(connect.CodeInvalidArgument), connect.CodeFailedPrecondition, connect.CodeInvalidArgument, true},
		{"envd permission", envdErr(connect.CodePermissionDenied), connect.CodeFailedPrecondition, connect.CodePermissionDenied, true},
		{"envd unknown user", envdErr(connect.CodeUnauthenticated), connect.CodeFailedPrecondition, connect.CodeInvalidArgument, true},
		{"envd unavailable", envdErr(connect.CodeUnavailable), connect.CodeFailedPrecondition, connect.CodeInternal, false},
		{"envd internal", envdErr(connect.CodeInternal), connect.CodeFailedPrecondition, connect.CodeInternal, false},
		{"files 404", filesErr(http.StatusNotFound), connect.CodeFailedPrecondition, connect.CodeNotFound, true},
		{"files 400", filesErr(http.StatusBadRequest), connect.CodeFailedPrecondition, connect.CodeInvalidArgument, true},
		{"files 401", filesErr(http.StatusUnauthorized), connect.CodeFailedPrecondition, connect.CodeInvalidArgument, true},
		{"files 403", filesErr(http.StatusForbidden), connect.CodeFailedPrecondition, connect.CodePermissionDenied, true},
		{"files 507", filesErr(http.StatusInsufficientStorage), connect.CodeFailedPrecondition, connect.CodeResourceExhausted, true},
		{"files 500", filesErr(http.StatusInternalServerError), connect.CodeFailedPrecondition, connect.CodeInternal, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, public := classify(tc.err, tc.conflict)
			if code != tc.code || public != tc.public {
				t.Fatalf("classify(%v) = %v, %v; want %v, %v", tc.err, code, public, tc.code, tc.public)
			}
		})
	}
}

func TestPublicMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{connect.NewError(connect.CodeNotFound, errors.New("process 7 not found")), "process 7 not found"},
		{&envdclient.StatusError{Op: "read", Path: "/x", Status: 404, Msg: "no such file"}, "read /x: no such file"},
		{fmt.Errorf("%w: sandbox abc", sandbox.ErrNotFound), "not found: sandbox abc"},
	} {
		if got := publicMessage(tc.err).Error(); got != tc.want {
			t.Errorf("publicMessage(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
