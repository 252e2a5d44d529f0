// Package portfwd makes servers that listen only on the loopback interface
// of a guest reachable on its external addresses, as E2B's envd does: a
// program started inside a sandbox with `python -m http.server --bind
// 127.0.0.1` or a dev server that binds localhost must still answer
// through the traffic proxy (getHost(port) in the SDKs).
//
// Forwarder scans the kernel's socket tables (/proc/net/tcp and tcp6)
// every Interval. For every port with a listener on a loopback address and
// none on the wildcard address, it listens on the same port of each
// non-loopback IPv4 address of the guest and relays each connection to
// the loopback listener (both directions, half-closes kept). When the
// loopback listener goes away, the forward is closed on the next scan.
//
// Limits: a program that later binds the wildcard address on a forwarded
// port fails with EADDRINUSE until the next scan after its loopback
// listener closed (the same as E2B's socat-based forwarder); IPv6-only
// external addresses are not forwarded (guests have IPv4 only).
package portfwd
