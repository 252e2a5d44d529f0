// Package telemetry is Capsule's Prometheus instrumentation: the control
// plane's metrics (API requests by route pattern and status, sandbox
// operation latencies, sandboxes by state and team, traffic through the
// sandbox proxy, the template build queue's depth and build durations)
// and the protection of a /metrics endpoint.
//
// Cardinality is bounded by construction: requests are labelled with the
// pattern their route was registered with ("GET /v1/sandboxes/{id}"),
// never the raw path; sandboxes by state and team are read from the
// sandboxes table at scrape time (cached for a few seconds, so that
// scrapers in a hurry do not each run the query) rather than kept as
// counters that drift from the truth, and so is the build queue's depth
// (capsule_build_queue_depth{state="pending"|"running"}, every replica's
// builds: RegisterBuildQueue over builds.Service.Depth). Package builds
// reports each build that ends, whichever path ends it, to ObserveBuild
// (capsule_build_duration_seconds{status}: from the build's start, or its
// submission when it never started, to its end).
//
// A /metrics endpoint is served on a private listener (capsule serve and
// capsule agent -metrics-listen, default 127.0.0.1:9090) and, when a
// scrape token is configured (-metrics-token), also on the public
// listener; with a token every scrape must present it as a bearer token
// (compared in constant time), on either listener.
//
// The host agent's metrics (capacity, use, running sandboxes, the metrics
// sampler's cost) are a collector of package agent, registered next to
// these when the agent is embedded in capsule serve.
package telemetry
