// Package errdefs holds Capsule's error classes, one set used from the
// store to the APIs (as containerd's errdefs): not found, conflict,
// invalid, unauthorized, forbidden, quota, unavailable and insufficient
// storage. A class is a sentinel error, tested with errors.Is or the
// Is… helpers; a package that keeps a sentinel of its own (store,
// agentclient, sandbox, image, proxy) makes it wrap its class.
//
// An *Error is a classified error for a caller: its Kind is a class, its
// Msg is safe to show (no internal detail) and its Err, the cause, is for
// logs only. PublicMessage finds that message; an error without one is
// internal and is shown as such.
//
// HTTPStatus is the one HTTP codec (class → status), shared by the REST
// API and the E2B facade; package errconnect is the one Connect codec
// (class ↔ connect.Code). The package imports nothing of Capsule's.
package errdefs

import (
	"errors"
	"fmt"
	"net/http"
)

// The error classes.
var (
	// ErrNotFound: the resource does not exist (or belongs to another
	// team, which is not told).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the resource exists already or is in the wrong state.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrUnauthorized: no or bad credentials.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: authenticated, but not allowed to.
	ErrForbidden = errors.New("forbidden")
	// ErrQuota: a quota or a resource is exhausted (HTTP 429).
	ErrQuota = errors.New("quota exceeded")
	// ErrUnavailable: the request cannot be served now (no capacity, a
	// peer unreachable; HTTP 503).
	ErrUnavailable = errors.New("unavailable")
	// ErrInsufficientStorage: a data disk is at its headroom; nothing was
	// written (HTTP 507).
	ErrInsufficientStorage = errors.New("insufficient storage")
)

// Classes lists the classes in the order Class tests them.
var Classes = []error{ErrInvalid, ErrUnauthorized, ErrForbidden, ErrNotFound, ErrConflict, ErrQuota, ErrUnavailable, ErrInsufficientStorage}

// Error is a classified error: Kind is one of the classes, Msg is safe to
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

// New is an *Error of class kind with the public message msg.
func New(kind error, msg string) error { return &Error{Kind: kind, Msg: msg} }

// Newf is New with a formatted message.
func Newf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap is an *Error of class kind with the public message msg and the
// cause err (for logs).
func Wrap(kind error, err error, msg string) error { return &Error{Kind: kind, Msg: msg, Err: err} }

// PublicMessage returns the message of err that may be shown to the
// caller, and false when err is not classified (an internal error).
func PublicMessage(err error) (string, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Msg, true
	}
	return "", false
}

// Class returns err's class: the Kind of its outermost *Error, else the
// first of Classes that err wraps; nil when it has none.
func Class(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		for _, c := range Classes {
			if errors.Is(e.Kind, c) {
				return c
			}
		}
	}
	for _, c := range Classes {
		if errors.Is(err, c) {
			return c
		}
	}
	return nil
}

// IsNotFound reports whether err is of class ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsConflict reports whether err is of class ErrConflict.
func IsConflict(err error) bool { return errors.Is(err, ErrConflict) }

// IsInvalid reports whether err is of class ErrInvalid.
func IsInvalid(err error) bool { return errors.Is(err, ErrInvalid) }

// IsUnauthorized reports whether err is of class ErrUnauthorized.
func IsUnauthorized(err error) bool { return errors.Is(err, ErrUnauthorized) }

// IsForbidden reports whether err is of class ErrForbidden.
func IsForbidden(err error) bool { return errors.Is(err, ErrForbidden) }

// IsQuota reports whether err is of class ErrQuota.
func IsQuota(err error) bool { return errors.Is(err, ErrQuota) }

// IsUnavailable reports whether err is of class ErrUnavailable.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// IsInsufficientStorage reports whether err is of class
// ErrInsufficientStorage.
func IsInsufficientStorage(err error) bool { return errors.Is(err, ErrInsufficientStorage) }

var statuses = map[error]int{
	ErrInvalid:             http.StatusBadRequest,
	ErrUnauthorized:        http.StatusUnauthorized,
	ErrForbidden:           http.StatusForbidden,
	ErrNotFound:            http.StatusNotFound,
	ErrConflict:            http.StatusConflict,
	ErrQuota:               http.StatusTooManyRequests,
	ErrUnavailable:         http.StatusServiceUnavailable,
	ErrInsufficientStorage: http.StatusInsufficientStorage,
}

// HTTPStatus maps err's class (Class) to its HTTP status, 500 when it has
// none: the one HTTP codec.
func HTTPStatus(err error) int {
	if s, ok := statuses[Class(err)]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Sentinel makes a package's own sentinel error of a class: its text is
// text (as errors.New(text) would say), and errors.Is finds the class
// through it (errors.Is(store.ErrNotFound, ErrNotFound)).
func Sentinel(text string, class error) error { return &sentinel{text: text, class: class} }

type sentinel struct {
	text  string
	class error
}

func (s *sentinel) Error() string { return s.text }
func (s *sentinel) Unwrap() error { return s.class }
