// Package leader runs a function on one control-plane replica at a time:
// the replicas share one PostgreSQL, and Elector.Run(ctx, name, fn) runs fn
// only while this replica leads name, cancels fn's context promptly when
// it stops leading, and campaigns again.
//
// # Why a session advisory lock
//
// Leadership is a PostgreSQL session-level advisory lock
// (pg_try_advisory_lock on a key derived from name) held on a connection
// dedicated to it, taken out of the store's pool (pgxpool Hijack) so that
// no query of the service ever runs on it. The alternative, a lease row
// with an expiry, needs every replica's clock to agree with the lease's and
// a renewal write every few seconds; the lock needs neither: PostgreSQL
// releases it the moment the holder's session ends, whatever ends it (the
// replica exits or crashes, the connection drops, an operator runs
// pg_terminate_backend), and nothing is written.
//
// The price is that a leader must notice at once that its session ended,
// and the server must notice a leader that vanished without closing its
// connection. Both are bounded here:
//
//   - The leader blocks reading its connection between checks (pgconn
//     WaitForNotification), so a connection the server closes (terminate,
//     restart) is seen immediately; every CheckInterval it also runs a
//     query with CheckTimeout, so a silent network partition is seen within
//     CheckInterval + CheckTimeout. Either way fn's context is cancelled and
//     Run waits for fn to return before it campaigns again.
//   - The session sets idle_session_timeout to SessionTimeout (and TCP
//     keepalives): a leader that stops checking (frozen, partitioned) loses
//     its session, hence the lock, after SessionTimeout on the server's
//     side, not after the operating system's two-hour keepalive.
//   - A new leader waits Grace (default CheckInterval + CheckTimeout) after
//     taking the lock before it starts fn. When the server released the
//     lock because the old leader's session ended, the old leader's fn has
//     been cancelled by then (it saw the end within that bound), so two
//     replicas never run fn at the same moment, provided fn returns
//     promptly once its context is done.
//
// A takeover therefore takes at most RetryInterval + Grace after the lock
// is released (defaults: 1 s + 3 s), and at most SessionTimeout more when
// the old leader vanished silently.
//
// When fn returns by itself while its replica leads, the lock is released
// and the replicas campaign again (fn runs again on the winner).
package leader
