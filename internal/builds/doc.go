// Package builds runs template builds: a recipe (internal/recipe) and an
// optional archive (internal/archive) become a template, built in a
// sandbox by a pool of workers that take their builds from a durable queue
// in the control plane's PostgreSQL.
//
// # Queue
//
// The queue is River (riverqueue/river, pgx driver): a build is a row of
// builds (db/migrations/00009_builds.sql) and a River job of kind "build"
// inserted in the same transaction, so a build that was accepted is a job
// that will run, on whichever control-plane replica fetches it first. Each
// replica runs Config.Workers workers (default 2). The uploaded archive is
// in PostgreSQL too (build_archive_chunks), so any replica can build what
// another accepted.
//
// A build belongs to one job at a time (builds.job_id); every write of a
// worker names its job, so a worker that lost its build changes nothing.
// River never retries a build job itself (MaxAttempts 1): a retry is a new
// job, made by this package in the transaction that hands the build over:
//
//   - a step that fails (non-zero exit, timeout, a refused healthcheck, a
//     missing FROM template) fails the build: the recipe would fail again;
//   - an infrastructure error (the host unreachable, the database gone, the
//     control plane stopping) requeues the build with a new job, up to
//     builds.max_attempts attempts, then fails it;
//   - a worker that dies mid-build stops beating builds.heartbeat_at
//     (every HeartbeatInterval); the sweeper, a River periodic job run by
//     River's leader, finds builds whose heartbeat is older than StaleAfter
//     and requeues or fails them the same way, and fails pending or running
//     builds whose job River dropped. So no build stays running for ever.
//
// Every attempt destroys its build sandbox when it ends, whatever the end;
// the sweeper destroys the sandbox of an attempt whose worker died (the
// sandbox carries the build's ID in its metadata, capsule_build, so even
// one created just before a crash is found).
//
// # Cancel
//
// Cancelling a pending build ends it at once (its job, when it runs,
// finds nothing to do). Cancelling a running build sets
// builds.cancel_requested; the worker reads it with every heartbeat, kills
// the running step and destroys the sandbox, within HeartbeatInterval plus
// the kill.
//
// # The build
//
// A worker creates the build sandbox from the recipe's FROM template (for
// the build's team, with the build's shape), unpacks the archive into
// /tmp/capsule-build/context with the sandbox's own tar, then runs the
// steps through the service's exec path (internal/service: StartExec) as
// each step's user, in its directory, with the environment accumulated so
// far; every output line goes to build_logs with its step number, stream
// and time. USER creates a missing user with a home, bash when the image
// has it and passwordless sudo; WORKDIR makes its directory and gives it to
// the current user; COPY copies from the context, owned by --chown or the
// step's user. Then, with a HEALTHCHECK, START is started in the
// background and the check is run until it passes (its start period, then
// at most retries failures) and the sandbox becomes a snapshot template,
// START's processes alive in every sandbox created from it; without one
// the sandbox's disk is flattened into an image template that boots cold
// (START does not run then). The template replaces the team's template of
// that name, with the recipe's last USER, WORKDIR and ENV as defaults
// (service.PublishTemplate).
//
// # Layer cache
//
// Identical step prefixes reuse a cached layer (layers.go): after its
// steps a build snapshots its sandbox as a hidden snapshot template of its
// team, keyed by the hash of its FROM template's version, its shape and its
// steps (COPY: with its archive's sha256); a later build of the team
// starts from the deepest cached prefix of its steps and skips them.
// Never across teams; a rebuilt FROM misses; LayerKeep per team, least
// recently used evicted (docs/builds.md).
//
// Progress is builds.current_step of total_steps; a failed build names the
// failing step (failed_step: 0 for FROM, 1..N for the steps, N+1 for the
// finalization: START, healthcheck, template) and its recipe line.
//
// Every end of a build — a worker's success, failure or cancel, a cancel
// before it ran, a failure before it ran, the sweeper's — is audited and
// reported to Config.OnEnd (the control plane's Prometheus histogram,
// package telemetry); Service.Depth is the queue's depth for its gauge.
package builds
