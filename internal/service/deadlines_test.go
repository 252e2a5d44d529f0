package service

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
)

// fakeClock is the reaper's clock in tests: Now stands still until
// Advance, and every timer armed on it is reported on armed (its due
// time), so a test sees what the reaper sleeps for.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	armed  chan time.Time
}

type fakeTimer struct {
	due     time.Time
	c       chan time.Time
	stopped bool
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, armed: make(chan time.Time, 1024)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) TimerAt(at time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{due: at, c: make(chan time.Time, 1)}
	if !at.After(c.now) {
		t.c <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.armed <- t.due
	return Timer{C: t.c, Stop: func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}}
}

// Advance moves the clock to at and fires the timers due by then.
func (c *fakeClock) Advance(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.due.After(at):
			t.c <- at
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// waitArmed waits (in real time, for the reaper's goroutine) until the
// reaper sleeps until want, failing after a minute with what it armed.
func (c *fakeClock) waitArmed(t *testing.T, want time.Time) {
	t.Helper()
	var got []time.Time
	limit := time.After(time.Minute)
	for {
		select {
		case due := <-c.armed:
			if due.Equal(want) {
				return
			}
			got = append(got, due)
		case <-limit:
			t.Fatalf("the reaper never slept until %v; it armed %v", want, got)
		}
	}
}

// TestReaperSleepsUntilTheNextDeadline runs the reaper's loop (Run) on a
// fake clock over the real database: it sleeps until the earliest
// deadline, wakes for a deadline shortened on this replica (SetTimeout)
// and for one written by another replica (the trigger's NOTIFY), sleeps
// longer when a deadline is lengthened, passes when the deadline comes,
// and tries a sandbox it could not handle again only after Retry.
func TestReaperSleepsUntilTheNextDeadline(t *testing.T) {
	e := newEnv(t) // the agent is unreachable: a claimed sandbox goes back to running
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, p := e.signup(t, "deadlines@example.com")
	sb := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 3600, time.Hour)
	id := sandboxIDOf(sb.ID)
	endAt := func() time.Time {
		t.Helper()
		return sandboxRow(t, e, sb.ID).EndAt.Time
	}
	// The deadlines are the database's clock; the reaper's starts at the
	// host's and moves only when the test says.
	clock := newFakeClock(time.Now().Round(0))
	const retry = 7 * time.Second
	r := NewReaper(e.sbx, ReaperConfig{Now: clock.Now, TimerAt: clock.TimerAt, MaxWait: 24 * time.Hour, Poll: 24 * time.Hour, Retry: retry})
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx) })
	defer wg.Wait()
	defer cancel()
	const late = time.Millisecond // the reaper wakes just after a deadline

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"sleeps until the only deadline", func(t *testing.T) {
			clock.waitArmed(t, endAt().Add(late))
		}},
		{"shortened on this replica: wakes and sleeps until the new one", func(t *testing.T) {
			if _, err := e.sbx.SetTimeout(ctx, p, id, 5); err != nil {
				t.Fatal(err)
			}
			clock.waitArmed(t, endAt().Add(late))
		}},
		{"lengthened on this replica: sleeps until the later one", func(t *testing.T) {
			if _, err := e.sbx.SetTimeout(ctx, p, id, 600); err != nil {
				t.Fatal(err)
			}
			clock.waitArmed(t, endAt().Add(late))
		}},
		{"shortened by another replica: the notification wakes it", func(t *testing.T) {
			// Another replica's write: no bell here, only the trigger.
			if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET end_at = now() + interval '3 seconds' WHERE id = $1", sb.ID); err != nil {
				t.Fatal(err)
			}
			clock.waitArmed(t, endAt().Add(late))
		}},
		{"lengthened by another replica: wakes at the old deadline, finds nothing, sleeps until the new one", func(t *testing.T) {
			old := endAt()
			if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET end_at = now() + interval '20 seconds' WHERE id = $1", sb.ID); err != nil {
				t.Fatal(err)
			}
			clock.Advance(old.Add(late))
			clock.waitArmed(t, endAt().Add(late))
			if r := sandboxRow(t, e, sb.ID); r.StateReason != "" {
				t.Fatalf("a pass before the deadline touched the sandbox: %q", r.StateReason)
			}
		}},
		{"at the deadline: a pass claims it, then retries only after Retry", func(t *testing.T) {
			at := endAt().Add(late)
			clock.Advance(at)
			// The host cannot be asked: it goes back to running, its
			// deadline passed, to be tried again Retry later.
			clock.waitArmed(t, at.Add(retry).Add(late))
			got := sandboxRow(t, e, sb.ID)
			if got.State != store.SandboxRunning || !strings.Contains(got.StateReason, "auto-pause failed") {
				t.Fatalf("after the pass at the deadline: %s %q", got.State, got.StateReason)
			}
			if acts := auditActions(t, e, p); len(acts) == 0 || acts[len(acts)-1] != "sandbox.auto_pause/error/system" {
				t.Fatalf("audit %v: want the failed auto-pause last", acts)
			}
		}},
		{"a new earlier deadline still wakes it before the retry", func(t *testing.T) {
			other := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 60, time.Hour)
			var end pgtype.Timestamptz
			if err := e.st.Pool().QueryRow(ctx, "UPDATE sandboxes SET end_at = $2 WHERE id = $1 RETURNING end_at",
				other.ID, clock.Now().Add(2*time.Second)).Scan(&end); err != nil {
				t.Fatal(err)
			}
			clock.waitArmed(t, end.Time.Add(late))
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}
