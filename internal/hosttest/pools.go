package hosttest

import (
	"fmt"
	"net/netip"
)

// The network slot pools of the VM tests, one table for the whole tree:
// go test runs packages in parallel, and two packages' pools must share no
// namespace prefix, interface prefix or address (TestPoolsDisjoint). A
// pool of slot test T names its namespaces T-…, its interfaces Tv…, hosts
// in 198.18.N.0/24 and veth links in 198.18.N+1.0/24. The tests of one
// package run one after the other, so they may share a pool; each package
// uses its own.
var (
	SandboxPool = pool("cst", 64)  // internal/sandbox
	AgentPool   = pool("cat", 80)  // internal/agent
	ServicePool = pool("csvc", 84) // internal/service: lifecycle, reconciliation, calls outliving clients
	APIPool     = pool("capi", 86) // internal/api: end to end
	// APITeamsPool, APIExecPool and APIDiskPool are internal/api's too.
	APITeamsPool        = pool("cta", 100)
	APIExecPool         = pool("ctb", 102)
	ServiceTTLPool      = pool("ctc", 104)    // internal/service: TTL and snapshots
	E2BPool             = pool("cte", 106)    // internal/e2bapi
	E2BLogsPool         = pool("ce2", 160)    // internal/e2bapi: sandbox logs
	ProxyPool           = pool("cpx", 108)    // internal/proxy
	CrashPool           = pool("ccrash", 124) // cmd/capsule: serve killed at idle, a second serve
	KillPool            = pool("ckill", 126)  // cmd/capsule: serve killed at each step
	APIDiskPool         = pool("cdh", 172)
	ServiceChainPool    = pool("cch", 174)  // internal/service: snapshot chains and stored quotas
	ServiceFullDiskPool = pool("cfp", 176)  // internal/service: a full data disk
	ServiceMetricsPool  = pool("cmx", 214)  // internal/service: the metrics history
	ServiceForkPool     = pool("cfk", 150)  // internal/service: forks
	SDKPool             = pool("csdk", 130) // sdk/go/capsule: the Go SDK against the real stack
	CLIPool             = pool("ccli", 132) // internal/cli: the command line against the real stack
	AgentRegPool        = pool("creg", 188) // internal/agentreg: outage pause with a real manager
	HostsIntPool        = pool("chi", 192)  // cmd/capsule: a registered agent process and a real control plane
	BuildsPool          = pool("cbld", 210) // internal/builds: template builds in real VMs
	BuildKillPool       = pool("cbk", 164)  // cmd/capsule: serve killed mid-build
	BuildCachePool      = pool("cbk2", 166) // internal/builds: the layer cache in real VMs
	LifecyclePool       = pool("clf", 154)  // internal/service: deadlines, filesystem-only pause, cold resume
	ServeTLSPool        = pool("ctls", 162) // cmd/capsule: serve's HTTPS with the development CA
	// MultiHostPools are cmd/capsule's cluster test: capsule serve's
	// embedded agent (0) and three agents, each in a network namespace
	// of its own (1–3).
	MultiHostPools = [4]Pool{pool("cmh0", 220), pool("cmh1", 222), pool("cmh2", 224), pool("cmh3", 226)}
	// ReplicaPools are the two hosts of internal/service's template
	// replication test.
	ReplicaPools = [2]Pool{pool("crp1", 156), pool("crp2", 158)}
	// MovePools are the two hosts of internal/service's test of paused
	// sandboxes moved off a draining host.
	MovePools = [2]Pool{pool("cdr0", 178), pool("cdr1", 180)}
)

// MultiHostLinks are the links between the host and the cluster test's
// agent namespaces: a /30 each out of 198.18.228.0/24 (198.18.229.0/24
// stays free).
var MultiHostLinks = Pool{Name: "cmhns", Veth: "cmhn",
	HostCIDR: netip.MustParsePrefix("198.18.228.0/24"), LinkCIDR: netip.MustParsePrefix("198.18.229.0/24")}

// EgressPool is internal/sandbox's pool for egress rules in real sandboxes.
var EgressPool = pool("cegr", 190)

// reserved are ranges used outside the tests: `capsule bench` (its
// network pool capsule-bench, interfaces cbv…), which a test may run.
var reserved = []Pool{{Name: "capsule-bench", Veth: "cbv",
	HostCIDR: netip.MustParsePrefix("198.18.96.0/24"), LinkCIDR: netip.MustParsePrefix("198.18.97.0/24")},
	// `capsule bench hosts`' cluster (cmd/capsule/benchcluster.go): the
	// embedded host's and three agents' slot pools and the links of their
	// namespaces.
	pool("cbh0", 238), pool("cbh1", 232), pool("cbh2", 234), pool("cbh3", 236),
	// `capsule bench fork`'s own pool (cmd/capsule/benchfork.go).
	pool("cbf", 152),
	// `capsule bench sdk`'s own pool (cmd/capsule/benchsdk.go).
	pool("cbs", 246),
	{Name: "cbhns", Veth: "cbhn", HostCIDR: netip.MustParsePrefix("198.18.240.0/24"), LinkCIDR: netip.MustParsePrefix("198.18.241.0/24")}}

// pools is the table TestPoolsDisjoint checks.
var pools = []Pool{SandboxPool, AgentPool, ServicePool, APIPool, APITeamsPool, APIExecPool, ServiceTTLPool, E2BPool,
	ProxyPool, CrashPool, KillPool, APIDiskPool, ServiceChainPool, ServiceFullDiskPool, SDKPool, CLIPool, AgentRegPool,
	EgressPool, ServiceMetricsPool, HostsIntPool,
	MultiHostPools[0], MultiHostPools[1], MultiHostPools[2], MultiHostPools[3], MultiHostLinks, BuildsPool,
	ReplicaPools[0], ReplicaPools[1], LifecyclePool, ServeTLSPool, MovePools[0], MovePools[1], BuildKillPool, BuildCachePool}

func pool(name string, n int) Pool {
	return Pool{Name: name, Veth: name + "v",
		HostCIDR: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", n)),
		LinkCIDR: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", n+1))}
}
