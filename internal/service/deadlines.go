package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/store/db"
)

// The reaper sleeps until the next deadline instead of polling: a timeout
// fires within the time one pass takes of its end_at, shortened or
// lengthened, whichever replica changed it.
//
// What wakes it:
//   - a timer to the earliest end_at of a running sandbox (NextSandboxDeadline);
//   - a deadline that comes earlier than that one. On this replica the
//     service rings the deadline bell (SetTimeout); on any replica,
//     including this one, the database NOTIFYs channel
//     capsule_sandbox_deadline from a trigger (migration 00014) when a
//     running sandbox gets a deadline it did not have or an earlier one,
//     and the reaper LISTENs on a connection of its own. A trigger, not a
//     pg_notify in each query, so that no path that writes end_at (create,
//     resume, connect, set-timeout, the reaper's own retries, and the ones
//     to come) can forget it; deadlines that move later (activity) notify
//     nobody, so a busy sandbox's touches cost no wake-up;
//   - a bounded re-read: at most MaxWait asleep while the LISTEN
//     connection is up, Poll while it is down (it is dialled again), so a
//     lost notification or a broken connection delays a timeout by that
//     much at worst, never for ever.
//
// LISTEN/NOTIFY rather than a short poll: a 1 s poll would cost every
// replica's leader a query a second for ever and still be late by up to a
// second; the notification arrives in milliseconds, and the poll remains
// only as the fallback.
//
// Sandboxes whose deadline passed but that a pass left running (their
// host could not be asked) are tried again Retry after that pass, not in
// a loop.

// deadlineChannel is the channel the trigger NOTIFYs.
const deadlineChannel = "capsule_sandbox_deadline"

// Timer is a one-shot timer on the reaper's clock: C receives when it
// fires; Stop stops it (as time.Timer's).
type Timer struct {
	C    <-chan time.Time
	Stop func() bool
}

// realTimerAt is ReaperConfig.TimerAt's default: a time.Timer for the
// time from now on the reaper's clock to at.
func realTimerAt(now func() time.Time) func(at time.Time) Timer {
	return func(at time.Time) Timer {
		t := time.NewTimer(max(at.Sub(now()), 0))
		return Timer{C: t.C, Stop: t.Stop}
	}
}

// deadlineBell tells this replica's reaper that a deadline changed (its
// zero value is ready to use). Ringing never blocks: a reaper that has a
// ring pending needs no second one.
type deadlineBell struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// subscribe returns a channel that receives after each ring, and its
// cancellation.
func (b *deadlineBell) subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[chan struct{}]struct{}{}
	}
	b.subs[ch] = struct{}{}
	return ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs, ch)
	}
}

// ring wakes every subscriber.
func (b *deadlineBell) ring() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Run handles expired sandboxes at their deadlines until ctx ends (see
// above): a pass whenever the earliest deadline is reached, a re-read of
// it whenever one may have come earlier.
func (r *Reaper) Run(ctx context.Context) {
	wake := make(chan struct{}, 1)
	listening := make(chan bool, 1)
	var wg sync.WaitGroup
	wg.Go(func() { r.listen(ctx, wake, listening) })
	defer wg.Wait()
	bell, cancel := r.s.deadlines.subscribe()
	defer cancel()

	listenUp := false
	var retryAt time.Time // expired sandboxes left running: not before this
	for {
		if ctx.Err() != nil {
			return
		}
		maxWait := r.cfg.Poll
		if listenUp {
			maxWait = r.cfg.MaxWait
		}
		now := r.cfg.Now()
		due, err := r.nextWake(ctx, now, now.Add(maxWait), retryAt)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.ErrorContext(ctx, "reaper: read the next deadline", "err", err)
			due = now.Add(r.cfg.Poll)
		}
		pass := due.Before(now.Add(maxWait)) // else only read again
		if due.After(now) {
			// ClaimExpiredSandbox wants end_at < now: wake just after.
			due = due.Add(time.Millisecond)
		}
		timer := r.cfg.TimerAt(due)
		fired := false
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
			fired = pass
		case <-bell:
			timer.Stop()
		case <-wake:
			timer.Stop()
		case up := <-listening:
			timer.Stop()
			listenUp = up
		}
		if !fired {
			continue // re-read: a deadline may have come earlier
		}
		res, err := r.Pass(ctx)
		if err != nil && ctx.Err() == nil {
			r.log.ErrorContext(ctx, "reaper pass", "err", err)
		}
		retryAt = time.Time{}
		if res.Skipped > 0 || err != nil {
			retryAt = r.cfg.Now().Add(r.cfg.Retry)
		}
	}
}

// nextWake is when the reaper must pass next, read at now: the earliest
// deadline ahead (horizon when there is none before it), or, when some
// sandbox's deadline has passed already, retryAt if that is earlier (now
// when it is zero).
func (r *Reaper) nextWake(ctx context.Context, now, horizon, retryAt time.Time) (time.Time, error) {
	row, err := r.s.st.Queries().NextSandboxDeadline(ctx, db.NextSandboxDeadlineParams{Now: now, Horizon: horizon})
	if err != nil {
		return time.Time{}, fmt.Errorf("next deadline: %w", err)
	}
	due := row.NextEndAt
	if row.Expired {
		if retryAt.IsZero() || retryAt.Before(now) {
			retryAt = now
		}
		if retryAt.Before(due) {
			due = retryAt
		}
	}
	return due, nil
}

// listen LISTENs on deadlineChannel on a connection of its own until ctx
// ends, sending to wake on every notification and to up whether it
// listens; a broken connection is dialled again after Poll.
func (r *Reaper) listen(ctx context.Context, wake chan<- struct{}, up chan bool) {
	report := func(v bool) {
		select {
		case <-up: // replace a report not read yet
		default:
		}
		up <- v
	}
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, wake, func() { report(true) })
		if ctx.Err() != nil {
			return
		}
		report(false)
		r.log.WarnContext(ctx, "reaper: deadline notifications lost; re-reading deadlines every poll interval", "poll", r.cfg.Poll, "err", err)
		t := r.cfg.TimerAt(r.cfg.Now().Add(r.cfg.Poll))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (r *Reaper) listenOnce(ctx context.Context, wake chan<- struct{}, listening func()) error {
	pc, err := r.s.st.Pool().Acquire(ctx)
	if err != nil {
		return err
	}
	// Its own connection: an interrupted wait leaves it unusable, so it
	// never goes back to the pool.
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+deadlineChannel); err != nil {
		return err
	}
	listening()
	// Notifications sent before LISTEN took effect are covered by the
	// re-read that the report of being up causes.
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}
