// Package guestinit: PLACEHOLDER, replaced by the init-mode implementation.
package guestinit

import (
	"context"
	"log/slog"
)

// System is the running guest.
type System struct{}

// Setup prepares the guest when envd runs as PID 1.
func Setup(ctx context.Context, log *slog.Logger) (*System, error) { return &System{}, nil }

// Shutdown stops the guest.
func (s *System) Shutdown(log *slog.Logger) {}
