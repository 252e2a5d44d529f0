// Package agentreg is the host agent's side of the control plane's host
// API (the hostapi contract): registration with a one-time token, the
// host's credentials and their refresh, the heartbeat, and the agent's
// server certificate for the mutual TLS the control plane dials it with.
// It is host code: it drives the sandbox manager (pause all, destroy all)
// and links nothing of the control plane (internal/deptest).
//
// Files. A registered agent keeps, in its directory (DATA-DIR/agent,
// mode 0700), CredentialsFile (host ID, access and refresh tokens with
// their expiries), ServerCertFile (the issued certificate chain followed
// by its ECDSA P-256 key, generated on the host and never sent: one file,
// so that a renewal replaces both at once) and CAFile (the internal CA
// bundle), each mode 0600 and written atomically (temporary file, fsync,
// rename, fsync of the directory). Registration writes the credentials
// last: they mark it complete. A restarted agent loads them and needs no
// token; a token passed again while they exist is ignored (logged). An
// agent that dies after the control plane accepted its registration but
// before the credentials were stored has spent its token (409 on reuse):
// an administrator regenerates one.
//
// Refresh. The access token is refreshed once two thirds of its life have
// passed, or when a heartbeat is refused with 401/403. The new credentials
// are stored durably before they are used. An agent that dies between the
// control plane's answer and that write comes back with the previous
// refresh token and the previous access token: the access token works
// until it expires, then the agent presents the previous refresh token,
// which the control plane accepts once more as long as nothing of the new
// credentials was used (hostapi.Credentials). If the write itself fails,
// the agent uses the new credentials anyway (the stored ones are stale
// either way) and retries the write at every beat. A refresh refused with
// 401 means the host can no longer authenticate: the agent pauses its
// running sandboxes once, logs that a new registration token is needed,
// and keeps beating with a back-off doubling up to MaxLockedOutBackoff (a
// success ends it).
//
// Heartbeats. Run beats every hostapi.HeartbeatInterval (or the interval
// the answer gives) with the host's capacity, reservations and sandbox
// counts (Host; ManagerHost over a sandbox.Manager). A 404 with the API's
// error body means the host was deleted: the agent destroys every
// sandbox, removes its files and Run returns ErrHostDeleted (`capsule
// agent` exits with status 3). A 404 without that body (a proxy, a wrong
// URL) destroys nothing. Network errors and 5xx answers count as missed
// beats; after hostapi.MissedBeatsBeforePause in a row the agent pauses
// every running sandbox, once per outage (paused sandboxes keep their
// memory and stay resumable), and keeps beating; the next heartbeat that
// gets through reports them paused, and the control plane's
// reconciliation takes them as they are.
//
// Certificates. When the server certificate has less than a third of its
// lifetime left, each heartbeat carries a CSR for a new key until an
// answer brings the certificate; it is checked (its key, its chain to the
// CA, server-auth usage), stored, and served from the next handshake on:
// TLSConfig reads the current certificate and CA on every handshake and
// requires the control plane's client certificate
// (hostapi.VerifyControlPlane).
//
// Time comes from a Clock, so that tests drive the loop without waiting.
package agentreg
