// Package deptest holds Capsule's dependency rules, checked by its test
// (as Tailscale's deptest does): which packages may link which. The rules
// keep the layers apart, so that no import added for convenience drags
// host code into the control plane or the testing package into a binary:
//
//   - the control plane (api, e2bapi, proxy, service, store, auth,
//     agentclient, wireid, scheduler, leader) links no host or guest code (agent, sandbox, vmm,
//     netslot, envd, nftables, PTYs) and not testing: it reaches hosts only
//     through hostagent.v1 (agentclient) and the wire contracts (envdapi,
//     agentproxy); nor the image store (internal/image): the service
//     learns the built-in template names from the agent's GetHostInfo;
//   - envd and its guest-side packages (guestinit, portfwd) link no
//     control-plane or host code;
//   - host code (agent, sandbox, vmm, netslot, disk, image, envdclient)
//     links no envd server, no control plane and not testing;
//   - the wire contracts (envdapi, agentproxy, agentapi, hostapi) and the
//     egress rules both sides check (egress) import nothing of Capsule's;
//   - the error classes (errdefs) import nothing of Capsule's, and their
//     Connect codec (errdefs/errconnect) only errdefs;
//   - the binaries (cmd/capsule, cmd/envd) do not link testing or the test
//     helpers.
//
// cmd/capsule is the composition (control plane and host agent in one
// binary), so the rules are per package, not per binary. The test reads the
// import graph with `go list -deps -json`; a violation fails it with
// "package X must not depend on Y (X → … → Y): <reason>". It runs with the
// other Go tests (`make test`).
//
// A second test keeps the README's architecture list whole: it walks
// internal/ and cmd/ and wants a line of that list for every package (and
// no line for a package that is gone).
package deptest
