package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Metric is one sample of a sandbox's resource use, as its guest sees it.
type Metric struct {
	Timestamp  time.Time
	CPUCount   int32
	CPUUsedPct float64
	// Bytes.
	MemUsed, MemTotal, MemCache, DiskUsed, DiskTotal int64
}

// Metrics samples a sandbox of p's team now: one sample while it runs,
// none while it is starting, paused or in transition (there is no history
// yet). A stopped, failed or lost sandbox is not found. Sampling is not
// activity: it does not push the sandbox's TTL.
func (s *Sandboxes) Metrics(ctx context.Context, p Principal, id pgtype.UUID) ([]Metric, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return nil, err
	}
	switch row.State {
	case store.SandboxStopped, store.SandboxError, store.SandboxMissing:
		return nil, errorf(ErrNotFound, "sandbox not found")
	case store.SandboxRunning:
	default:
		return []Metric{}, nil
	}
	c, err := s.agentFor(ctx, row.HostID)
	if err != nil {
		return nil, err
	}
	resp, err := c.GetSandboxMetrics(ctx, connect.NewRequest(&pb.GetSandboxMetricsRequest{SandboxId: ID(id)}))
	if err != nil {
		err = agentError(err, "metrics")
		if errors.Is(err, ErrConflict) {
			return []Metric{}, nil // it left running since the read
		}
		return nil, err
	}
	m := resp.Msg.GetMetrics()
	return []Metric{{
		Timestamp: m.GetTimestamp().AsTime().UTC(), CPUCount: int32(m.GetCpuCount()), CPUUsedPct: m.GetCpuUsedPct(),
		MemUsed: int64(m.GetMemUsed()), MemTotal: int64(m.GetMemTotal()), MemCache: int64(m.GetMemCache()),
		DiskUsed: int64(m.GetDiskUsed()), DiskTotal: int64(m.GetDiskTotal()),
	}}, nil
}

// Refresh keeps a running sandbox of p's team alive: its deadline moves to
// at least now + sec (sec 0: now + its own timeout, as activity does); it
// is never brought earlier. A sandbox that is not running is not found
// (there is nothing to keep alive).
func (s *Sandboxes) Refresh(ctx context.Context, p Principal, id pgtype.UUID, sec int32) (Sandbox, error) {
	if sec < 0 || sec > maxTimeoutSec {
		return Sandbox{}, errorf(ErrInvalid, "duration: 0 to %d seconds", maxTimeoutSec)
	}
	var (
		row db.Sandbox
		err error
	)
	if sec == 0 {
		row, err = s.st.Queries().TouchSandbox(ctx, db.TouchSandboxParams{ID: id, TeamID: p.TeamID})
	} else {
		row, err = s.st.Queries().ExtendSandboxTimeout(ctx, db.ExtendSandboxTimeoutParams{ID: id, TeamID: p.TeamID, TimeoutSec: sec})
	}
	if errors.Is(err, store.ErrNotFound) {
		return Sandbox{}, errorf(ErrNotFound, "sandbox not found or not running")
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("refresh: %w", err)
	}
	s.noteTouched(id, s.now())
	return s.view(row, nil), nil
}
