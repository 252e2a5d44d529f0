package leader

import (
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config configures an Elector. Zero durations mean the defaults.
type Config struct {
	// Pool is where the dedicated connections come from (each campaign
	// takes one and hijacks it: it never returns to the pool).
	Pool *pgxpool.Pool
	// CheckInterval is how often a leader checks its session with a query
	// (default 1 s); a connection the server closes is seen at once.
	CheckInterval time.Duration
	// CheckTimeout bounds a check (and a campaign's query) (default 2 s).
	CheckTimeout time.Duration
	// RetryInterval is how often a follower tries to take the lock
	// (default 1 s).
	RetryInterval time.Duration
	// Grace is how long a new leader waits before it runs fn (default
	// CheckInterval + CheckTimeout: the longest an old leader takes to see
	// that its session ended). Negative: no wait, for a database no other
	// replica can reach (capsule serve's embedded PostgreSQL).
	Grace time.Duration
	// SessionTimeout is the campaign session's idle_session_timeout: the
	// server ends the session of a leader that stopped checking (default
	// 10 s; it must exceed CheckInterval).
	SessionTimeout time.Duration
	// OnFollow, when set, is called after each campaign that found the lock
	// held by another session.
	OnFollow func(name string)
	Log      *slog.Logger
}

// Defaults of Config.
const (
	DefaultCheckInterval  = time.Second
	DefaultCheckTimeout   = 2 * time.Second
	DefaultRetryInterval  = time.Second
	DefaultSessionTimeout = 10 * time.Second
)

// Elector campaigns for leaderships on one PostgreSQL.
type Elector struct {
	cfg Config
	log *slog.Logger
}

// New returns an elector over cfg.Pool.
func New(cfg Config) (*Elector, error) {
	if cfg.Pool == nil {
		return nil, errors.New("leader: no pool")
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	switch {
	case cfg.Grace == 0:
		cfg.Grace = cfg.CheckInterval + cfg.CheckTimeout
	case cfg.Grace < 0:
		cfg.Grace = 0
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = DefaultSessionTimeout
	}
	if cfg.SessionTimeout <= cfg.CheckInterval {
		return nil, errors.New("leader: SessionTimeout must exceed CheckInterval")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Elector{cfg: cfg, log: log.With("component", "leader")}, nil
}

// Key is the advisory lock key of name: the first 8 bytes of FNV-1a over
// "capsule/leader/" + name.
func Key(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("capsule/leader/" + name))
	return int64(h.Sum64())
}

// Run campaigns for name until ctx ends and runs fn while this elector
// leads: fn's context is cancelled when the leadership is lost (or ctx
// ends), and Run waits for fn to return before it campaigns again. It
// returns when ctx ends, after fn returned and the lock was released.
func (e *Elector) Run(ctx context.Context, name string, fn func(ctx context.Context)) {
	key := Key(name)
	log := e.log.With("leader", name)
	for ctx.Err() == nil {
		conn, err := e.dial(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.WarnContext(ctx, "leader: cannot open the campaign's connection", "err", err)
			}
			e.sleep(ctx, e.cfg.RetryInterval)
			continue
		}
		led := e.campaign(ctx, conn, name, key, fn, log)
		// Closing the session releases the lock.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.CheckTimeout)
		_ = conn.Close(cctx)
		cancel()
		if led {
			// Let the others campaign before this one does again.
			e.sleep(ctx, e.cfg.RetryInterval)
		}
	}
}

// dial takes a connection out of the pool for a campaign and bounds its
// life on the server's side.
func (e *Elector) dial(ctx context.Context) (*pgx.Conn, error) {
	// A server that accepts but never answers must not hold the campaign.
	actx, cancel := context.WithTimeout(ctx, 5*e.cfg.CheckTimeout)
	defer cancel()
	pc, err := e.cfg.Pool.Acquire(actx)
	if err != nil {
		return nil, err
	}
	conn := pc.Hijack()
	qctx, cancel := context.WithTimeout(ctx, e.cfg.CheckTimeout)
	defer cancel()
	// Keepalives matter on TCP only (ignored on a Unix socket);
	// idle_session_timeout exists from PostgreSQL 14 on (before, a silent
	// leader's lock waits for the keepalives).
	_, err = conn.Exec(qctx, `SELECT
		CASE WHEN current_setting('server_version_num')::integer >= 140000
		     THEN set_config('idle_session_timeout', $1, false) END,
		set_config('tcp_keepalives_idle', '5', false), set_config('tcp_keepalives_interval', '2', false),
		set_config('tcp_keepalives_count', '3', false), set_config('application_name', 'capsule leader', false)`,
		strconv.FormatInt(e.cfg.SessionTimeout.Milliseconds(), 10))
	if err != nil {
		_ = conn.Close(context.WithoutCancel(qctx))
		return nil, err
	}
	return conn, nil
}

// campaign tries to take the lock on conn until it leads (then runs the
// term and returns true) or ctx ends or conn fails (false).
func (e *Elector) campaign(ctx context.Context, conn *pgx.Conn, name string, key int64, fn func(context.Context), log *slog.Logger) bool {
	for ctx.Err() == nil {
		var ok bool
		qctx, cancel := context.WithTimeout(ctx, e.cfg.CheckTimeout)
		err := conn.QueryRow(qctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&ok)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.WarnContext(ctx, "leader: campaign failed", "err", err)
			}
			return false
		}
		if ok {
			e.term(ctx, conn, fn, log)
			return true
		}
		if e.cfg.OnFollow != nil {
			e.cfg.OnFollow(name)
		}
		if !e.sleepWatching(ctx, conn, e.cfg.RetryInterval) {
			return false
		}
	}
	return false
}

// term is one leadership: wait out the grace, run fn until the session
// ends, ctx ends or fn returns.
func (e *Elector) term(ctx context.Context, conn *pgx.Conn, fn func(context.Context), log *slog.Logger) {
	if e.cfg.Grace > 0 && !e.sleepWatching(ctx, conn, e.cfg.Grace) {
		if ctx.Err() == nil {
			log.WarnContext(ctx, "leader: lost the session during the grace period")
		}
		return
	}
	log.InfoContext(ctx, "leader: leading")
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cancel()
		fn(fctx)
	}()
	alive := e.watch(fctx, conn, time.Time{})
	cancel()
	<-done
	switch {
	case !alive:
		log.WarnContext(ctx, "leader: lost the leadership (session ended); stopped")
	case ctx.Err() == nil:
		log.InfoContext(ctx, "leader: the function returned; releasing the leadership")
	}
}

// sleepWatching waits d while watching conn: false when the session ended
// or ctx ended.
func (e *Elector) sleepWatching(ctx context.Context, conn *pgx.Conn, d time.Duration) bool {
	return e.watch(ctx, conn, time.Now().Add(d)) && ctx.Err() == nil
}

// watch blocks reading conn (a closed connection is seen at once) and
// checks it with a query every CheckInterval, until ctx ends or until
// (when not zero). It returns false as soon as the session is gone.
func (e *Elector) watch(ctx context.Context, conn *pgx.Conn, until time.Time) bool {
	for {
		if ctx.Err() != nil {
			return true
		}
		step := e.cfg.CheckInterval
		if !until.IsZero() {
			left := time.Until(until)
			if left <= 0 {
				return true
			}
			step = min(step, left)
		}
		wctx, cancel := context.WithTimeout(ctx, step)
		err := conn.PgConn().WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return !conn.IsClosed()
		}
		if err != nil && !pgconn.Timeout(err) {
			return false // the server closed the session
		}
		if conn.IsClosed() {
			return false
		}
		if err != nil {
			// A quiet interval: check that the session answers.
			qctx, cancel := context.WithTimeout(ctx, e.cfg.CheckTimeout)
			perr := conn.Ping(qctx)
			cancel()
			if perr != nil {
				return ctx.Err() != nil && !conn.IsClosed()
			}
		}
	}
}

func (e *Elector) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
