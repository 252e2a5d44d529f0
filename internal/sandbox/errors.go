package sandbox

import "github.com/capsulehq/capsule/internal/errdefs"

// Error classes, for errors.Is at the API edge; each wraps its errdefs
// class (capacity: quota, which the agent sends as ResourceExhausted).
var (
	ErrNotFound = errdefs.Sentinel("not found", errdefs.ErrNotFound)
	ErrConflict = errdefs.Sentinel("conflict", errdefs.ErrConflict)
	ErrInvalid  = errdefs.Sentinel("invalid", errdefs.ErrInvalid)
	ErrCapacity = errdefs.Sentinel("capacity exhausted", errdefs.ErrQuota)
	// ErrNoSpace: the data directory's filesystem would keep less free
	// space than Config.DiskHeadroomMB after the operation (a create,
	// pause or snapshot); nothing was written.
	ErrNoSpace = errdefs.Sentinel("insufficient storage", errdefs.ErrInsufficientStorage)
)
