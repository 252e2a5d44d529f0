package capsule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// The classes of the platform's refusals; test with errors.Is.
var (
	// ErrNotFound: no such resource in the team (or another team's).
	ErrNotFound = errors.New("capsule: not found")
	// ErrConflict: the resource is in the wrong state or exists already.
	ErrConflict = errors.New("capsule: conflict")
	// ErrInvalid: the request is malformed (the message says what).
	ErrInvalid = errors.New("capsule: invalid request")
	// ErrUnauthorized: no credentials, or bad ones.
	ErrUnauthorized = errors.New("capsule: unauthorized")
	// ErrForbidden: authenticated, but not allowed to.
	ErrForbidden = errors.New("capsule: forbidden")
	// ErrQuota: a quota or rate limit of the team refuses the request.
	ErrQuota = errors.New("capsule: quota exceeded")
	// ErrUnavailable: the platform cannot serve it now (no capacity, a
	// host unreachable); worth retrying later.
	ErrUnavailable = errors.New("capsule: unavailable")
	// ErrInsufficientStorage: the sandbox host's disk is full.
	ErrInsufficientStorage = errors.New("capsule: insufficient storage")
)

// APIError is a refusal of the platform.
type APIError struct {
	// Status is the HTTP status.
	Status int
	// Message is the platform's explanation.
	Message string
	// RequestID identifies the request in the platform's logs.
	RequestID string
	// RetryAfter is the wait the platform asked for (429, 503), or 0.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.RequestID != "" {
		return fmt.Sprintf("capsule: %d %s (request %s)", e.Status, msg, e.RequestID)
	}
	return fmt.Sprintf("capsule: %d %s", e.Status, msg)
}

// Is reports the error's class (errors.Is(err, ErrNotFound) …).
func (e *APIError) Is(target error) bool {
	return target != nil && classOf(e.Status) == target
}

func classOf(status int) error {
	switch status {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return ErrInvalid
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	case http.StatusTooManyRequests:
		return ErrQuota
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return ErrUnavailable
	case http.StatusInsufficientStorage:
		return ErrInsufficientStorage
	}
	return nil
}

// maxErrorBody bounds what is read of an error answer.
const maxErrorBody = 64 << 10

// errorFrom reads the platform's error answer resp (closing its body).
func errorFrom(resp *http.Response) error {
	defer resp.Body.Close()
	e := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id"),
		RetryAfter: retryAfter(resp.Header, time.Now())}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &body) == nil && body.Message != "" {
		e.Message = body.Message
	} else if len(data) > 0 && len(data) < 512 {
		e.Message = string(data)
	}
	return e
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or unparsable.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
