// Package service holds the control plane's business rules, shared by the
// REST API (internal/api) and, later, the E2B facade and the dashboard.
// Handlers parse and format; everything that decides lives here.
//
// Every method takes the request's context first and, where it touches a
// team's resources, the caller's Principal: a resource of another team is
// ErrNotFound, never ErrForbidden, so its existence does not leak.
//
// The service speaks its own vocabulary, not the store's: typed IDs
// (SandboxID, TeamID, UserID, APIKeyID, InvitationID: package wireid's, so
// that the API, the E2B facade and the proxy share them without importing
// the store) and its own Sandbox, built from the row by sandboxOf. The
// store's UUIDs meet the typed IDs only in pgUUID and the …IDOf
// conversions. (Hosts, templates and the admin calls still take the
// store's UUIDs.)
//
// Errors are classified with the error classes of package errdefs
// (errors.go names them; test with errors.Is): an *Error carries a public
// message and a cause for the logs; anything else is an internal error
// that the API logs and hides.
//
// Sandboxes are persisted before and after every agent call: a sandbox is
// inserted as starting (after the team's quotas are checked under the
// team's row lock) before the agent is asked to create it, and becomes
// running, or error, after. Each sandbox lives on one host (its record's
// host_id): the scheduler chooses it at create (placement.go: the
// candidates query, scheduler.Choose, a re-check under the host's row
// lock in the insert's transaction; 503 with the scheduler's reason when
// nothing fits) and every later call goes to that host's agent (a paused
// sandbox resumed while its host drains is moved, files and all, to
// another host first: move.go), through
// one agentclient.Pool (registered hosts by wire ID, mutual TLS; static
// agents by name). capsule serve's own agent is the registered host
// "local" (EnsureEmbedded). The host monitor (monitor.go) marks hosts
// that stopped beating unreachable and their sandboxes missing, and brings
// them back once their records follow their agent (ReconcileHost).
//
// The TTL is the control plane's: a running sandbox's end_at is its last
// activity plus timeout_sec (create and resume start it, Ping and touch
// push it, SetTimeout replaces it), and the Reaper pauses running
// sandboxes past it as the system (audit action sandbox.auto_pause); the
// agent gets no timeout. The reaper sleeps until the next deadline
// (deadlines.go: a timer, woken for an earlier deadline by SetTimeout on
// this replica and by the database's NOTIFY from a trigger on any, with a
// bounded re-read as the fallback), so a timeout fires at its deadline
// however it was shortened or lengthened. A pause keeps memory unless
// asked for the filesystem only, and a resume restores it unless asked to
// boot cold (pausemodes.go: PauseWith, ResumeWith, ConnectWith). A failed pause never destroys a sandbox: an
// auto-pause the agent refuses (a full data disk, a failing save) is
// retried after ReaperConfig.PauseBackoff, doubled per failure
// (sandboxes.pause_failures), and after PauseRetries refusals the record
// is left in error with the reason while the host keeps the sandbox and
// its disk (reconciliation leaves a sandbox in error that ran alone; the
// team can destroy it). A running sandbox's envd address is kept in the
// record (envd_url), so reads need no agent. A sandbox's env vars are
// stored sealed with auth.FieldCipher, bound to its ID, and never returned.
//
// Snapshots (snapshots.go) are templates named per team in the database;
// the agent knows each by its row's ID (TemplateID), so names never
// collide between teams there. A sandbox's template name resolves to the
// team's own template, then a public one (store.PlatformTeamID), then a
// built-in image, whose names the service learns from the host agent
// (GetHostInfo.builtin_templates; Sandboxes.BuiltinTemplates): the control
// plane links no image code. Deleting a public template is ErrForbidden: public
// templates are visible to every team, so that leaks nothing. Deleting a
// snapshot frees its name at once; its files stay on the host while
// anything chains onto them (snapshots of sandboxes created from it, and
// their sandboxes: see package sandbox), and go with the last of them.
// A snapshot the agent saved but whose record was never written (the
// control plane died in between) is deleted on the host by the start-up
// reconciliation (Reconcile), which owns the host's tpl- templates.
//
// Templates across hosts (replicate.go): a create from a snapshot on a
// host that lacks its files first copies them there from a holder, the
// control plane relaying one agent's ExportTemplate into the other's
// ImportTemplate (hash-checked, atomic on the target), once however many
// creates ask; host_templates records the copies (the scheduler's
// affinity, a deletion's fan-out, the owned copies of reconciliation),
// and forgets those a host evicted from its cache or lost.
//
// Forks (fork.go) are new sandboxes that start as running copies of a
// running one, made by its host (agent ForkSandbox) from a hidden
// snapshot that exists only on that host and only as long as a fork's
// disk chains onto it: no template record, nothing to delete. Their
// records, quotas and the host's room are checked in one transaction
// before the host is asked; each fork then succeeds or fails on its own,
// and a failed one is recorded in error and destroyed on the host.
//
// Storage quotas (Quotas.MaxPausedSandboxes, MaxStoredMB; per team in
// teams.max_paused_sandboxes and max_stored_mb, NULL: the platform
// default): a team's paused sandboxes, and the MiB it stores — the memory
// of its paused sandboxes plus its snapshots' bytes. A pause or a
// snapshot over them is ErrQuota (429) and changes nothing; the reaper's
// auto-pause is not refused (pausing keeps the data; the alternatives are
// running on for ever or losing it) and is audited with over_quota. A
// host whose data disk is at its headroom refuses creates, pauses and
// snapshots: ErrInsufficientStorage (507).
//
// Accounts (accounts.go, invitations.go): who may sign up is a
// SignupPolicy — open, invite (the default: only with a team invitation,
// created by the team's admins and owners, stored as the SHA-256 of its
// one-time token and redeemed under its row lock in the sign-up's
// transaction) or closed; the bootstrap admin is exempt, and a first OAuth
// login registers a user only when sign-up is open. API keys are created
// and revoked with a user's session only; a member revokes only their own
// keys; a key lives as long as its creator's membership of its team (see
// Accounts). A user disabled by a platform admin (users.disabled_at) gets
// no session (password or OAuth login), and the authentication of their
// sessions and of the keys they created refuses them (ErrForbidden) on
// every call until they are re-enabled: nothing is revoked, so
// re-enabling restores them.
//
// Platform admins (admin.go): users.is_admin, created at install (the
// bootstrap admin of `capsule serve`), checked in the database on every
// Admin call and held FOR SHARE through each change, never taken from a
// token. Admin lists every team, user and host, the platform-wide audit
// log and the platform team's sandboxes; it switches a team's BYOC flag,
// deletes a team through the owner's deletion path (Teams.deleteTeam),
// and disables or re-enables users (never oneself, never the last active
// admin: the active admins' rows are locked together). Every change is
// audited with scope admin and the admin as the actor.
//
// Hosts (hosts.go): a host is created by a platform administrator
// (regular: the platform team's) or by an owner or admin of a team with
// BYOC enabled (byoc: that team's), pending, with a one-time registration
// token (chreg_, its SHA-256 stored, 24 h, regenerable while pending) and
// the address the control plane will dial (HOST:PORT). users.is_admin and
// the caller's role are read from the database on every call; another
// team's host, and a regular host for a non-administrator, is ErrNotFound.
// The agent's side is internal/hostapi: Register consumes the token under
// the host's row lock (a used token ErrConflict, an unknown or expired one
// ErrUnauthorized, bad input ErrInvalid with nothing consumed), records
// what the agent reports but never its address, has the internal CA
// (internal/pki) certify the declared address from the agent's CSR, and
// issues a host JWT (auth.HostTokens: its own key and audience, so never a
// user session) and a refresh token of a new family; Refresh stores the
// new refresh token before it revokes the old one (one transaction) and,
// when a revoked token comes back, revokes its whole family; Heartbeat
// makes a pending or unreachable host online (draining stays), keeps the
// reported usage and renews the certificate on a CSR. Deleting a host
// with live sandboxes is ErrConflict unless forced (drain, destroy each on
// the agent when reachable, mark its record stopped); the row is removed,
// so the agent's next heartbeat is ErrNotFound, and the agent is evicted
// from the pool. Hosts.Resolve is the agentclient.Resolver of registered
// hosts: https://ADDRESS with the CA's mutual TLS.
//
// A sandbox's state is a State (state.go); every change the service makes
// is in one table (transitions, CanTransition), which setState checks
// before the store's conditional UPDATE applies it. Time comes from the
// injected clock (ServicesConfig.Now, ReaperConfig.Now), never from
// time.Now directly, where it decides something (expiry, the activity
// throttle, the team stats' sample slots and usage days), so tests drive
// it instead of sleeping.
//
// Team stats and usage (teamstats.go, TeamStats): a sampler on the leading
// replica records every 10 s what each team's sandboxes hold (running and
// paused counts; the vCPUs and memory that starting, running, pausing and
// resuming sandboxes reserve, and ⌈Σ paused memory / 2⌉: paused ones hold
// no vCPU) with each hour's maxima; Stats reads a range as bucket maxima
// (SQL, the 30-day range from the hourly maxima) with "now" read live from
// the sandboxes table. Usage per UTC day is CPU- and memory-minutes used
// (the stored 5-minute metric points) and reserved (the samples); RollUp,
// run hourly with Prune, first stores the running sandboxes' newest points
// (CheckpointMetrics), then rolls up every day of the 60-day window not
// rolled up yet, so that a job that stopped for days catches up on all of
// them; today and days not rolled up yet are computed live.
//
// The sandbox lifecycle is split by concern: sandboxes.go (the Sandboxes
// service and its Sandbox view), create.go (the create request and
// Create), transitions.go (Destroy, Pause, Resume, PauseAll and the one
// transition they share), list.go (Get, List and its cursor: newest or
// oldest first by creation time then ID, start-time and template
// filters), snapshotpages.go (ListSnapshotPage: a team's snapshots newest
// first; TeamSlug), logs.go (Logs: a sandbox's lifecycle events from the
// audit log, its console from the host or, once destroyed, from
// sandbox_logs; storeConsole at the destroy, PruneLogs by LogsRetention),
// quotas.go (Quotas and their checks), sealing.go (the sealed env vars)
// agentcalls.go (how an agent call that failed or timed out is
// settled), sandboxmetrics.go (a sandbox's metrics history) and
// teamstats.go (team stats and usage).
package service
