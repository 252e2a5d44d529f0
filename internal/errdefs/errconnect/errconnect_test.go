package errconnect

import (
	"errors"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/internal/errdefs"
)

// TestCodec: every class is sent as a code that reads back as the same
// class (insufficient storage reads back as quota: the agent's
// ErrorClassHeader tells the two apart), and the codes of no class read
// as none.
func TestCodec(t *testing.T) {
	for _, tc := range []struct {
		name  string
		class error
		code  connect.Code
		back  error
	}{
		{"not found", errdefs.ErrNotFound, connect.CodeNotFound, errdefs.ErrNotFound},
		{"conflict", errdefs.ErrConflict, connect.CodeFailedPrecondition, errdefs.ErrConflict},
		{"invalid", errdefs.ErrInvalid, connect.CodeInvalidArgument, errdefs.ErrInvalid},
		{"unauthorized", errdefs.ErrUnauthorized, connect.CodeUnauthenticated, errdefs.ErrUnauthorized},
		{"forbidden", errdefs.ErrForbidden, connect.CodePermissionDenied, errdefs.ErrForbidden},
		{"quota", errdefs.ErrQuota, connect.CodeResourceExhausted, errdefs.ErrQuota},
		{"unavailable", errdefs.ErrUnavailable, connect.CodeUnavailable, errdefs.ErrUnavailable},
		{"insufficient storage", errdefs.ErrInsufficientStorage, connect.CodeResourceExhausted, errdefs.ErrQuota},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, ok := Code(fmt.Errorf("op: %w", tc.class))
			if !ok || code != tc.code {
				t.Fatalf("Code = %v, %v, want %v", code, ok, tc.code)
			}
			if got := Class(code); got != tc.back {
				t.Fatalf("Class(%v) = %v, want %v", code, got, tc.back)
			}
		})
	}
	t.Run("codes read as classes", func(t *testing.T) {
		for code, want := range map[connect.Code]error{
			connect.CodeAlreadyExists: errdefs.ErrConflict, connect.CodeAborted: errdefs.ErrConflict,
			connect.CodeOutOfRange: errdefs.ErrInvalid, connect.CodeInternal: nil, connect.CodeUnknown: nil,
			connect.CodeCanceled: nil, connect.CodeDataLoss: nil,
		} {
			if got := Class(code); got != want {
				t.Errorf("Class(%v) = %v, want %v", code, got, want)
			}
		}
	})
	t.Run("no class, no code", func(t *testing.T) {
		if code, ok := Code(errors.New("boom")); ok {
			t.Fatalf("Code = %v", code)
		}
	})
}
