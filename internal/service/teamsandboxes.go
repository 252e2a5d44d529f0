package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/capsulehq/capsule/internal/store"
)

// teamSweepPage is the page size of DestroyTeamSandboxes' listing.
const teamSweepPage = 100

// DestroyTeamSandboxes destroys every sandbox of p's team that is not
// stopped, each through Destroy (the agent call, the stopped state and
// the audit event), as p. It goes on past a failure and returns how many
// were destroyed, how many were not, and the failures joined.
func (s *Sandboxes) DestroyTeamSandboxes(ctx context.Context, p Principal) (destroyed, failed int, err error) {
	var live []string
	for st := range validStates {
		if st != store.SandboxStopped {
			live = append(live, st)
		}
	}
	var errs []error
	cursor := ""
	for {
		// Destroyed sandboxes leave the listing (stopped), so the cursor
		// moves past the ones that failed and stay.
		page, next, lerr := s.List(ctx, p, ListFilter{States: live, Cursor: cursor, Limit: teamSweepPage})
		if lerr != nil {
			errs = append(errs, fmt.Errorf("list the team's sandboxes: %w", lerr))
			break
		}
		for _, sb := range page {
			if derr := s.Destroy(ctx, p, sb.ID); derr != nil {
				failed++
				errs = append(errs, fmt.Errorf("destroy %s: %w", sb.ID.String(), derr))
				continue
			}
			destroyed++
		}
		if next == "" {
			break
		}
		cursor = next
	}
	return destroyed, failed, errors.Join(errs...)
}
