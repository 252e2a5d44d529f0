// Package controlplane is the control plane's composition root: the one
// place that wires the store, the agent pool, the services, the TTL
// reaper, reconciliation, the /v1 API, the OAuth providers, the traffic
// proxy and the E2B facade, and dispatches the two listeners between
// them. `capsule serve` and every `capsule bench` build the control plane
// here, so a bench measures the server that serve runs.
//
// Each host agent's address is registered once, in the agentclient.Pool;
// the services' clients and the traffic proxy both read it there.
//
// It links control-plane packages only: the embedded host agent is
// started by cmd/capsule and reached over loopback like a remote one
// (internal/deptest checks this). The test fixtures of the packages it
// composes (servicetest) cannot import it, since those packages' own
// tests use them; they share the service wiring through
// service.NewServices.
//
// Lifecycle: New builds everything (opening and migrating the database);
// Start campaigns for the background leadership (package leader); each
// term reconciles the records with the agents and runs the reaper, the
// host monitor, the metrics pruner, the team stats sampler (every 10 s)
// and the usage rollup and team stats pruner (every hour); Start also
// starts this replica's build workers, which feed the build metrics;
// Shutdown stops the loops and pauses every running sandbox (so the
// database records them as paused); Close releases the pool and the store.
package controlplane
