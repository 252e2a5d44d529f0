// Package scheduler chooses the host of a new sandbox. It is pure logic:
// no database, no I/O, no clock of its own. The caller loads the candidate
// hosts (db/queries/scheduler.sql returns them in one round trip, with what
// the sandboxes recorded on each host reserve; Candidates converts its rows)
// and asks Choose for a host.
//
// # Rules
//
// Eligibility (a host that fails one of these is never chosen):
//
//   - Team. A BYOC team's sandboxes go only to the team's own hosts; every
//     other team's only to platform hosts (team store.PlatformTeamID). A
//     BYOC host never takes another team's sandbox, and a BYOC team never
//     lands on the platform's or another team's hosts.
//   - Status. Only `online` hosts whose last heartbeat is younger than
//     Config.StaleAfter (default three heartbeat intervals, 45 s): pending,
//     draining, unreachable and offline hosts are excluded, and so is an
//     online host whose heartbeat is stale (the host monitor has not marked
//     it unreachable yet).
//   - Tags. A request's tags (key=value) must all be among the host's.
//   - Admission. Memory and disk are never overcommitted: reserved + request
//     ≤ total. vCPUs are overcommitted: reserved + request ≤ the host's
//     vCPU capacity, which is what the host declares (its agent's
//     -max-vcpus, hosts.max_vcpus) or else ⌊total_vcpus × ratio⌋, where
//     total_vcpus is the host's CPUs and the ratio Config.CPUOvercommit
//     (`capsule serve -cpu-overcommit`, default 4). A declared capacity
//     wins in both directions: the agent refuses more than it declared, and
//     an operator who declares more than the ratio gives means it.
//
// What a sandbox reserves on its host (Reservation; the candidates query
// sums the same): in the states that hold a VM or may hold one again at any
// moment — starting, running, pausing, resuming (the service's quota states)
// and missing (its host stopped reporting; it is most likely still running)
// — its vCPUs, memory and disk; paused, its disk and its saved memory (the
// pause wrote the memory to the host's disk) but no vCPU or memory; in
// error, its disk (an error keeps the disk for the team). Stopped reserves
// nothing.
//
// # Choice
//
// Among the admissible hosts the load of a host is its tightest resource
// after the placement: max(vCPU, memory, disk utilisation), each
// (reserved + request) / capacity, in [0, 1]. Template affinity is a
// discount on that load: a host that already holds the requested template
// scores load − Config.AffinityWeight, one that does not scores its load.
// The lowest score wins; equal scores go to the host that holds the
// template, then the lower load, then the smaller name, then the smaller ID
// (deterministic). With the default weight 0.25 a host that holds the
// template is preferred unless it is more than 25 points of utilisation
// tighter than the best host without it: copying a template (up to
// gigabytes) costs more than a slightly busier host, but not more than
// piling every sandbox of a popular template on its first host. A negative
// AffinityWeight turns affinity off (0 means the default); a weight ≥ 1
// makes it absolute (any holder before any non-holder, since loads are in
// [0, 1]). Consequently, among hosts with the same affinity
// the chosen one always has the lowest load.
//
// # Placing
//
// Choose reads a snapshot: two creates may choose the same host for its
// last room. The transaction that inserts the sandbox re-checks the chosen
// host under its row lock (Queries.LockHostForPlacement, converted by
// Locked, then Admissible) and, when it no longer fits, chooses again
// without it.
//
// # Failure
//
// When no host is admissible, Choose returns a *NoHostError (errors.Is
// ErrNoHost) whose Reason says why — the team has no host at all, none is
// online, none has the tags, or the resource that is short on the online
// hosts — and whose message names the numbers. The service maps it to 503.
package scheduler
