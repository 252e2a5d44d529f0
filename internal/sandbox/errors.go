package sandbox

import "errors"

// Error classes, for errors.Is at the API edge.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
	ErrCapacity = errors.New("capacity exhausted")
)
