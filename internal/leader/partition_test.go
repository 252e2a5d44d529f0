package leader_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/leader"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/jackc/pgx/v5/pgxpool"
)

// freezer is a TCP proxy to PostgreSQL's Unix socket that can stop
// forwarding in both directions while keeping the connections open: a
// network partition that neither end is told about, which the real server
// cannot produce on demand.
type freezer struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen chan struct{} // closed: forwarding; open: frozen
}

func newFreezer(t *testing.T, socket string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: socket, frozen: make(chan struct{})}
	close(f.frozen) // forwarding
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(t, c)
		}
	}()
	return f
}

func (f *freezer) gate() chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen
}

func (f *freezer) freeze() {
	f.mu.Lock()
	f.frozen = make(chan struct{})
	f.mu.Unlock()
}

func (f *freezer) thaw() {
	f.mu.Lock()
	close(f.frozen)
	f.mu.Unlock()
}

func (f *freezer) serve(t *testing.T, c net.Conn) {
	s, err := net.Dial("unix", f.target)
	if err != nil {
		c.Close()
		return
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			<-f.gate() // frozen: hold what was read
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if err != io.EOF {
					dst.Close()
				}
				return
			}
		}
	}
	go pipe(s, c)
	go pipe(c, s)
}

// TestSilentPartition: the leader's connection goes silent (neither end
// told). The leader's check times out and its function is cancelled; the
// server ends the silent session after SessionTimeout, which releases the
// lock; the other replica takes over after its grace — never while the old
// leader's function runs.
func TestSilentPartition(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dsn := pgtest.StartForTest(t)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(cfg.ConnConfig.Host, fmt.Sprintf(".s.PGSQL.%d", cfg.ConnConfig.Port))
	fz := newFreezer(t, socket)

	const sessionTimeout = 3 * time.Second
	rec := newRecorder()
	start := func(name string, pool *pgxpool.Pool) {
		e, err := leader.New(leader.Config{Pool: pool, CheckInterval: checkInterval, CheckTimeout: 1 * time.Second,
			RetryInterval: retryInterval, SessionTimeout: sessionTimeout})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); e.Run(rctx, "partition", rec.fn(name)) }()
		t.Cleanup(func() { stop(); <-done; pool.Close() })
	}
	// "a" reaches PostgreSQL through the proxy and starts first.
	pcfg := cfg.Copy()
	pcfg.ConnConfig.Host, pcfg.ConnConfig.Port = "127.0.0.1", uint16(fz.ln.Addr().(*net.TCPAddr).Port)
	pcfg.ConnConfig.TLSConfig, pcfg.ConnConfig.Fallbacks = nil, nil
	poolA, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	start("a", poolA)
	if ev := rec.next(t, 30*time.Second); !ev.started || ev.who != "a" {
		t.Fatalf("first event %+v; want a started", ev)
	}
	poolB, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	start("b", poolB)

	fz.freeze()
	defer fz.thaw()
	frozen := time.Now()
	stop := rec.next(t, 10*time.Second)
	if stop.started || stop.who != "a" {
		t.Fatalf("after the partition: %+v; want a stopped", stop)
	}
	bound := sessionTimeout + retryInterval + checkInterval + time.Second + 10*time.Second
	next := rec.next(t, bound)
	if !next.started || next.who != "b" || !next.at.After(stop.at) || rec.max() != 1 {
		t.Fatalf("after a stopped: %+v (at most %d at once); want b started after a stopped", next, rec.max())
	}
	t.Logf("a stopped %v after the partition, b started %v after it", stop.at.Sub(frozen), next.at.Sub(frozen))
	if next.at.Sub(frozen) < sessionTimeout {
		t.Fatalf("b started %v after the partition, before the server could end a's session (%v)", next.at.Sub(frozen), sessionTimeout)
	}
}
