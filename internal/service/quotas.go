package service

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store/db"
)

// Quotas are a team's limits; a team's NULL column takes the value of
// Config.DefaultQuotas.
type Quotas struct {
	MaxRunningSandboxes   int32
	MaxVCPUsPerSandbox    int32
	MaxMemoryMBPerSandbox int32
	MaxTotalVCPUs         int32
	MaxTotalMemoryMB      int64
	// MaxPausedSandboxes and MaxStoredMB bound what a team keeps on
	// disk: paused sandboxes, and the MiB of their memory plus its
	// snapshot templates (checkStoredQuotas).
	MaxPausedSandboxes int32
	MaxStoredMB        int64
}

// DefaultQuotas are the platform defaults.
var DefaultQuotas = Quotas{
	MaxRunningSandboxes:   20,
	MaxVCPUsPerSandbox:    8,
	MaxMemoryMBPerSandbox: 8192,
	MaxTotalVCPUs:         32,
	MaxTotalMemoryMB:      32768,
	MaxPausedSandboxes:    20,
	MaxStoredMB:           51200,
}

func (s *Sandboxes) teamQuotas(t db.Team) Quotas {
	q := s.quotas
	if t.MaxRunningSandboxes.Valid {
		q.MaxRunningSandboxes = t.MaxRunningSandboxes.Int32
	}
	if t.MaxVCPUsPerSandbox.Valid {
		q.MaxVCPUsPerSandbox = t.MaxVCPUsPerSandbox.Int32
	}
	if t.MaxMemoryMBPerSandbox.Valid {
		q.MaxMemoryMBPerSandbox = t.MaxMemoryMBPerSandbox.Int32
	}
	if t.MaxTotalVCPUs.Valid {
		q.MaxTotalVCPUs = t.MaxTotalVCPUs.Int32
	}
	if t.MaxTotalMemoryMB.Valid {
		q.MaxTotalMemoryMB = t.MaxTotalMemoryMB.Int64
	}
	if t.MaxPausedSandboxes.Valid {
		q.MaxPausedSandboxes = t.MaxPausedSandboxes.Int32
	}
	if t.MaxStoredMB.Valid {
		q.MaxStoredMB = t.MaxStoredMB.Int64
	}
	return q
}

// checkQuotas refuses a sandbox of vcpus and memoryMB that would exceed
// the team's quotas, given what its active sandboxes hold. Run it after
// LockTeam in the transaction that inserts or resumes the sandbox.
func (s *Sandboxes) checkQuotas(ctx context.Context, q *db.Queries, t db.Team, vcpus, memoryMB int32) error {
	lim := s.teamQuotas(t)
	if vcpus > lim.MaxVCPUsPerSandbox {
		return errorf(ErrQuota, "vcpus: %d requested, at most %d per sandbox", vcpus, lim.MaxVCPUsPerSandbox)
	}
	if memoryMB > lim.MaxMemoryMBPerSandbox {
		return errorf(ErrQuota, "memory_mb: %d requested, at most %d per sandbox", memoryMB, lim.MaxMemoryMBPerSandbox)
	}
	use, err := q.CountTeamSandboxUsage(ctx, db.CountTeamSandboxUsageParams{TeamID: t.ID, States: activeStates})
	if err != nil {
		return fmt.Errorf("quota usage: %w", err)
	}
	if use.Sandboxes+1 > lim.MaxRunningSandboxes {
		return errorf(ErrQuota, "the team runs %d sandboxes, its quota is %d", use.Sandboxes, lim.MaxRunningSandboxes)
	}
	if use.VCPUs+vcpus > lim.MaxTotalVCPUs {
		return errorf(ErrQuota, "the team's sandboxes use %d vCPUs, %d more would exceed its quota of %d", use.VCPUs, vcpus, lim.MaxTotalVCPUs)
	}
	if use.MemoryMB+int64(memoryMB) > lim.MaxTotalMemoryMB {
		return errorf(ErrQuota, "the team's sandboxes use %d MiB, %d more would exceed its quota of %d MiB", use.MemoryMB, memoryMB, lim.MaxTotalMemoryMB)
	}
	return nil
}

// checkStoredQuotas refuses, with ErrQuota, a pause (pausedMB: the
// sandbox's memory, which the pause writes out; paused: one more paused
// sandbox) or a snapshot (pausedMB 0, paused false, snapshotMB its
// expected size) that would take the team past its paused-sandboxes or
// stored-MiB quota. Stored is what the team keeps on disk: the memory of
// its paused sandboxes plus the bytes of its snapshot templates. Run it
// after LockTeam, in the transaction of the transition it guards.
func (s *Sandboxes) checkStoredQuotas(ctx context.Context, q *db.Queries, teamID pgtype.UUID, paused bool, addMB int64) error {
	t, err := q.GetTeam(ctx, teamID)
	if err != nil {
		return notFound(err, "team")
	}
	lim := s.teamQuotas(t)
	use, err := q.CountTeamStoredUsage(ctx, teamID)
	if err != nil {
		return fmt.Errorf("quota usage: %w", err)
	}
	// The sandbox being paused is in pausing already: it counts once.
	if paused && use.Paused > lim.MaxPausedSandboxes {
		return errorf(ErrQuota, "the team keeps %d paused sandboxes, its quota is %d: resume or destroy one first", use.Paused-1, lim.MaxPausedSandboxes)
	}
	stored := use.PausedMemoryMB + (use.TemplateBytes+(1<<20-1))>>20
	if paused {
		stored -= addMB // counted in pausing already
	}
	if stored+addMB > lim.MaxStoredMB {
		return errorf(ErrQuota, "the team stores %d MiB (paused sandboxes and snapshots), %d more would exceed its quota of %d MiB", stored, addMB, lim.MaxStoredMB)
	}
	return nil
}

// checkResumeQuotas checks the team's totals once the resuming sandbox
// counts (resuming is an active state).
func (s *Sandboxes) checkResumeQuotas(ctx context.Context, q *db.Queries, t db.Team) error {
	lim := s.teamQuotas(t)
	use, err := q.CountTeamSandboxUsage(ctx, db.CountTeamSandboxUsageParams{TeamID: t.ID, States: activeStates})
	if err != nil {
		return fmt.Errorf("quota usage: %w", err)
	}
	switch {
	case use.Sandboxes > lim.MaxRunningSandboxes:
		return errorf(ErrQuota, "the team runs %d sandboxes, its quota is %d", use.Sandboxes-1, lim.MaxRunningSandboxes)
	case use.VCPUs > lim.MaxTotalVCPUs:
		return errorf(ErrQuota, "resuming would bring the team's sandboxes to %d vCPUs, over its quota of %d", use.VCPUs, lim.MaxTotalVCPUs)
	case use.MemoryMB > lim.MaxTotalMemoryMB:
		return errorf(ErrQuota, "resuming would bring the team's sandboxes to %d MiB, over its quota of %d MiB", use.MemoryMB, lim.MaxTotalMemoryMB)
	}
	return nil
}
