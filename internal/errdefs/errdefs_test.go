package errdefs

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

// TestClassAndHTTPStatus: every class has its status; a classified error
// keeps its public message apart from its cause; the outermost *Error
// decides the class even when its cause is of another class; an error of
// no class is 500 and has no public message.
func TestClassAndHTTPStatus(t *testing.T) {
	cause := fmt.Errorf("host: %w", ErrQuota) // a cause of another class
	for _, tc := range []struct {
		name   string
		err    error
		class  error
		status int
		msg    string
	}{
		{"not found", New(ErrNotFound, "sandbox not found"), ErrNotFound, http.StatusNotFound, "sandbox not found"},
		{"conflict", Newf(ErrConflict, "the sandbox is %s", "paused"), ErrConflict, http.StatusConflict, "the sandbox is paused"},
		{"invalid", New(ErrInvalid, "bad"), ErrInvalid, http.StatusBadRequest, "bad"},
		{"unauthorized", New(ErrUnauthorized, "no"), ErrUnauthorized, http.StatusUnauthorized, "no"},
		{"forbidden", New(ErrForbidden, "no"), ErrForbidden, http.StatusForbidden, "no"},
		{"quota", New(ErrQuota, "too many"), ErrQuota, http.StatusTooManyRequests, "too many"},
		{"unavailable", New(ErrUnavailable, "down"), ErrUnavailable, http.StatusServiceUnavailable, "down"},
		{"insufficient storage", New(ErrInsufficientStorage, "full"), ErrInsufficientStorage, http.StatusInsufficientStorage, "full"},
		{"outer kind wins over the cause's class", Wrap(ErrUnavailable, cause, "no capacity"), ErrUnavailable, http.StatusServiceUnavailable, "no capacity"},
		{"wrapped with context", fmt.Errorf("create: %w", New(ErrNotFound, "template x not found")), ErrNotFound, http.StatusNotFound, "template x not found"},
		{"a sentinel wrapping a class", fmt.Errorf("store: %w", ErrConflict), ErrConflict, http.StatusConflict, ""},
		{"no class", errors.New("boom"), nil, http.StatusInternalServerError, ""},
		{"nil", nil, nil, http.StatusInternalServerError, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Class(tc.err); got != tc.class {
				t.Fatalf("Class = %v, want %v", got, tc.class)
			}
			if got := HTTPStatus(tc.err); got != tc.status {
				t.Fatalf("HTTPStatus = %d, want %d", got, tc.status)
			}
			msg, ok := PublicMessage(tc.err)
			if msg != tc.msg || ok != (tc.msg != "") {
				t.Fatalf("PublicMessage = %q, %v, want %q", msg, ok, tc.msg)
			}
		})
	}
	t.Run("the cause stays out of the public message", func(t *testing.T) {
		err := Wrap(ErrUnavailable, errors.New("dial tcp 10.0.0.1:7000: refused"), "the sandbox host is unreachable")
		if msg, _ := PublicMessage(err); msg != "the sandbox host is unreachable" {
			t.Fatalf("public message %q", msg)
		}
		if !errors.Is(err, ErrUnavailable) || err.Error() != "the sandbox host is unreachable: dial tcp 10.0.0.1:7000: refused" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("Is helpers", func(t *testing.T) {
		for _, c := range []struct {
			is    func(error) bool
			class error
		}{{IsNotFound, ErrNotFound}, {IsConflict, ErrConflict}, {IsInvalid, ErrInvalid}, {IsUnauthorized, ErrUnauthorized},
			{IsForbidden, ErrForbidden}, {IsQuota, ErrQuota}, {IsUnavailable, ErrUnavailable}, {IsInsufficientStorage, ErrInsufficientStorage}} {
			if !c.is(New(c.class, "x")) || c.is(errors.New("x")) {
				t.Errorf("Is helper of %v", c.class)
			}
		}
	})
}
