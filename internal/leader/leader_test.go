package leader_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/leader"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Intervals of the tests' electors; the takeover bound follows from them.
const (
	checkInterval = 200 * time.Millisecond
	checkTimeout  = 2 * time.Second
	retryInterval = 100 * time.Millisecond
	// takeoverBound: RetryInterval + Grace (CheckInterval + CheckTimeout),
	// plus slack for a loaded machine.
	takeoverBound = retryInterval + checkInterval + checkTimeout + 5*time.Second
)

type event struct {
	who     string
	started bool
	at      time.Time
}

// recorder is what the elected functions report: who runs, and at most how
// many at once.
type recorder struct {
	mu         sync.Mutex
	running    map[string]bool
	maxRunning int
	events     chan event
	follows    chan string
}

func newRecorder() *recorder {
	return &recorder{running: map[string]bool{}, events: make(chan event, 100), follows: make(chan string, 10000)}
}

func (r *recorder) fn(who string) func(context.Context) {
	return func(ctx context.Context) {
		r.mu.Lock()
		r.running[who] = true
		r.maxRunning = max(r.maxRunning, len(r.running))
		r.mu.Unlock()
		r.events <- event{who, true, time.Now()}
		<-ctx.Done()
		r.mu.Lock()
		delete(r.running, who)
		r.mu.Unlock()
		r.events <- event{who, false, time.Now()}
	}
}

func (r *recorder) max() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxRunning
}

func (r *recorder) next(t *testing.T, within time.Duration) event {
	t.Helper()
	select {
	case ev := <-r.events:
		return ev
	case <-time.After(within):
		t.Fatalf("no leader started or stopped within %v", within)
		return event{}
	}
}

// replica is one control plane: its own pool and elector.
type replica struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
}

func startReplica(t *testing.T, dsn, name string, rec *recorder) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	e, err := leader.New(leader.Config{Pool: pool, CheckInterval: checkInterval, CheckTimeout: checkTimeout,
		RetryInterval: retryInterval, OnFollow: func(string) {
			select {
			case rec.follows <- name:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer pool.Close()
		e.Run(ctx, "test-loop", rec.fn(name))
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// lockHolder is the backend holding the leadership lock of name.
func lockHolder(ctx context.Context, pool *pgxpool.Pool, name string) (int32, error) {
	k := uint64(leader.Key(name))
	var pid int32
	err := pool.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
	    AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1`, int64(k>>32), int64(k&0xffffffff)).Scan(&pid)
	return pid, err
}

// TestElection runs two replicas' electors on one PostgreSQL: exactly one
// runs the function; terminating the leader's connection hands the
// leadership over within the bound, with the old leader's function stopped
// before the new one starts; the old leader then follows; cancelling the
// leader hands over too.
func TestElection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dsn := pgtest.StartForTest(t)
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	rec := newRecorder()
	replicas := map[string]*replica{}
	for _, n := range []string{"a", "b"} {
		replicas[n] = startReplica(t, dsn, n, rec)
	}
	other := map[string]string{"a": "b", "b": "a"}

	var first event
	ok := t.Run("exactly one leads", func(t *testing.T) {
		first = rec.next(t, 30*time.Second)
		if !first.started {
			t.Fatalf("first event %+v; want a start", first)
		}
		// The other campaigns and loses, several times.
		seen := 0
		deadline := time.After(30 * time.Second)
		for seen < 5 {
			select {
			case who := <-rec.follows:
				if who == other[first.who] {
					seen++
				}
			case ev := <-rec.events:
				t.Fatalf("%+v while %s leads", ev, first.who)
			case <-deadline:
				t.Fatalf("%s never campaigned", other[first.who])
			}
		}
		if m := rec.max(); m != 1 {
			t.Fatalf("%d ran at once", m)
		}
	})
	if !ok {
		return
	}

	var second event
	ok = t.Run("killing the leader's connection hands over", func(t *testing.T) {
		pid, err := lockHolder(ctx, admin, "test-loop")
		if err != nil {
			t.Fatalf("the lock's holder: %v", err)
		}
		killed := time.Now()
		var done bool
		if err := admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&done); err != nil || !done {
			t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, done, err)
		}
		stop := rec.next(t, 10*time.Second)
		if stop.started || stop.who != first.who {
			t.Fatalf("after the kill: %+v; want %s stopped", stop, first.who)
		}
		second = rec.next(t, takeoverBound)
		if !second.started || second.who != other[first.who] {
			t.Fatalf("after the stop: %+v; want %s started", second, other[first.who])
		}
		if took := second.at.Sub(killed); took > takeoverBound {
			t.Fatalf("takeover took %v; want at most %v", took, takeoverBound)
		} else {
			t.Logf("the old leader stopped %v after the kill, the new one started %v after it",
				stop.at.Sub(killed), took)
		}
		if !second.at.After(stop.at) || rec.max() != 1 {
			t.Fatalf("the new leader started at %v, the old one stopped at %v (at most %d at once)", second.at, stop.at, rec.max())
		}
	})
	if !ok {
		return
	}

	ok = t.Run("the old leader follows", func(t *testing.T) {
		deadline := time.After(30 * time.Second)
		for {
			select {
			case who := <-rec.follows:
				if who == first.who {
					return
				}
			case ev := <-rec.events:
				t.Fatalf("%+v while %s leads", ev, second.who)
			case <-deadline:
				t.Fatalf("%s never campaigned again", first.who)
			}
		}
	})
	if !ok {
		return
	}

	t.Run("cancelling the leader hands over", func(t *testing.T) {
		r := replicas[second.who]
		r.cancel()
		<-r.done
		stop := rec.next(t, 10*time.Second)
		if stop.started || stop.who != second.who {
			t.Fatalf("after the cancel: %+v; want %s stopped", stop, second.who)
		}
		third := rec.next(t, takeoverBound)
		if !third.started || third.who != first.who || rec.max() != 1 {
			t.Fatalf("after the cancel: %+v (at most %d at once); want %s started", third, rec.max(), first.who)
		}
	})
}
