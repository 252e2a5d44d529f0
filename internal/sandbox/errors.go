package sandbox

import "errors"

// Error classes, for errors.Is at the API edge.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
	ErrCapacity = errors.New("capacity exhausted")
	// ErrNoSpace: the data directory's filesystem would keep less free
	// space than Config.DiskHeadroomMB after the operation (a create,
	// pause or snapshot); nothing was written.
	ErrNoSpace = errors.New("insufficient storage")
)
