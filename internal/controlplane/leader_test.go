package controlplane

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/capsulehq/capsule/internal/leader"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBackgroundLoopsRunOnOneReplica: while another replica holds the
// background loops' leadership, Start follows — it returns at once without
// reconciling (which would find the agent silent here) and runs
// no reaper; when that replica goes, this one takes the leadership over and
// its term starts by reconciling.
func TestBackgroundLoopsRunOnOneReplica(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := testConfig(t)
	logs := &syncBuffer{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	cp, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	// A paused sandbox: the team stats sampler records it once this
	// replica leads.
	if _, err := cp.Store.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: store.PlatformTeamID, Template: "minimal",
		State: store.SandboxPaused, VCPUs: 1, MemoryMB: 512, AllowInternetAccess: true, Metadata: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	samples := func() (n int) {
		if err := cp.Store.Pool().QueryRow(ctx, `SELECT count(*) FROM team_stats WHERE team_id = $1 AND paused = 1
			AND reserved_vcpus = 0 AND reserved_memory_mb = 256`, store.PlatformTeamID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The other replica: its own pool and elector, leading first.
	pool, err := pgxpool.New(ctx, cfg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	el, err := leader.New(leader.Config{Pool: pool, Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	otherCtx, stopOther := context.WithCancel(ctx)
	leading, otherDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(otherDone)
		el.Run(otherCtx, BackgroundLeadership, func(ctx context.Context) { close(leading); <-ctx.Done() })
	}()
	defer func() { stopOther(); <-otherDone }()
	select {
	case <-leading:
	case <-ctx.Done():
		t.Fatal("the other replica never led")
	}

	if !t.Run("Start follows the other replica", func(t *testing.T) {
		if err := cp.Start(ctx); err != nil {
			t.Fatalf("Start = %v; want nil (another replica leads: no reconciliation here)", err)
		}
		if strings.Contains(logs.String(), "reconcil") {
			t.Fatalf("the follower reconciled:\n%s", logs.String())
		}
		if n := samples(); n != 0 {
			t.Fatalf("the follower sampled the team stats (%d samples)", n)
		}
	}) {
		return
	}

	t.Run("the follower takes over when the leader goes", func(t *testing.T) {
		stopOther()
		<-otherDone
		// Takeover: a campaign retry, the grace (CheckInterval +
		// CheckTimeout) and a reconciliation that finds the agent silent.
		deadline := time.Now().Add(leader.DefaultRetryInterval + leader.DefaultCheckInterval + leader.DefaultCheckTimeout + 30*time.Second)
		for !strings.Contains(logs.String(), "reconcile: the host's agent is unreachable") {
			if time.Now().After(deadline) {
				t.Fatalf("no reconciliation after the takeover; logs:\n%s", logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(logs.String(), "leader: leading") {
			t.Fatalf("reconciled without leading; logs:\n%s", logs.String())
		}
		// The leader's term runs the team stats sampler (its first sample
		// at once).
		for samples() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the leader took no team stats sample; logs:\n%s", logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
