// Package netslot gives every sandbox its own network: a slot. A slot is
// a network namespace holding the VM's TAP device and one end of a veth
// pair whose other end is in the host namespace. NAT inside the namespace
// lets every guest use the same address, so memory snapshots move freely
// between slots, while the host reaches each guest at an address of its
// own.
//
// # Address plan
//
// With the defaults (every range is configurable, see Config):
//
//	guest (VM eth0)      169.254.0.21/30       the same in every slot
//	gateway (tap0)       169.254.0.22/30       the same in every slot
//	guest MAC            06:00:a9:fe:00:15     the same in every slot
//	gateway MAC (tap0)   06:00:a9:fe:00:16     the same in every slot
//	host address, slot i 10.11.0.0/16 + i      10.11.<i/256>.<i%256>; the host
//	                                           reaches the guest there
//	veth /31, slot i     10.12.0.0/16 + 2i     host end cvh<i> (even address),
//	                                           slot end veth0 (odd address)
//
// Slot indices run from 1 to MaxSlots (default 1024). Slot 1: host
// address 10.11.0.1, cvh1 10.12.0.2/31, veth0 10.12.0.3/31. The host has
// the route "10.11.0.1 via 10.12.0.3 dev cvh1"; the slot namespace has
// "default via 10.12.0.2 dev veth0". The guest is configured by the
// kernel parameter from Slot.KernelIPParam:
//
//	ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off[:<dns>]
//
// The MACs are fixed because a snapshot holds the guest's MAC in its
// device state and the gateway's MAC in its ARP cache: a guest restored
// in another slot finds the same gateway at once. NewPool refuses
// HostCIDR and LinkCIDR ranges that overlap a route (any table) or an
// address of the host. The guest network exists only inside slot
// namespaces, so it cannot clash with the host.
//
// # Traffic
//
// Host to guest: the host connects to the slot's host address; the route
// sends it into cvh<i>; in the namespace the prerouting chain translates
// the destination to the guest (dnat) and the packet leaves through tap0.
// The guest sees the host's end of the veth (10.12.0.2) as the source.
//
// Guest to the internet (egress on): the guest sends to its gateway; the
// namespace forwards through veth0, translating the source to the slot's
// host address (snat); the host forwards it out of its own interfaces,
// masquerading it to their address. net.ipv4.ip_forward is enabled on the
// host by NewPool and left on (it is never restored: other software may
// depend on it by then). Slots use whatever resolver Config.DNS names
// (announced in the ip= parameter); DNS is ordinary egress, except while
// the slot's rules name domains (see "Egress rules").
//
// # nftables
//
// Each namespace holds one IPv4 table named Config.Name ("capsule"). The
// host's, with the default prefix and ranges (the DNS rules exist only
// when Config.DNS is set; one deny rule per DenyEgress prefix, by default
// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 and
// 169.254.0.0/16):
//
//	table ip capsule {
//		chain input {
//			type filter hook input priority filter; policy accept;
//			iifname "cvh*" ct state established,related accept
//			iifname "cvh*" ip daddr <dns> udp dport 53 accept
//			iifname "cvh*" ip daddr <dns> tcp dport 53 accept
//			iifname "cvh*" drop
//		}
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "cvh*" oifname "cvh*" drop
//			oifname "cvh*" ct state established,related accept
//			oifname "cvh*" drop
//			iifname "cvh*" ip saddr != 10.11.0.0/16 drop
//			iifname "cvh*" ip daddr <dns> udp dport 53 accept
//			iifname "cvh*" ip daddr <dns> tcp dport 53 accept
//			iifname "cvh*" ip daddr 10.11.0.0/16 drop     # HostCIDR
//			iifname "cvh*" ip daddr 10.12.0.0/16 drop     # LinkCIDR
//			iifname "cvh*" ip daddr 10.0.0.0/8 drop       # DenyEgress...
//			...
//			iifname "cvh*" accept
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			oifname != "cvh*" ip saddr 10.11.0.0/16 masquerade
//		}
//		chain output {
//			type filter hook output priority filter; policy accept;
//			ct state established,related accept
//			ip daddr 10.11.0.0/16 meta skuid != <uid> meta l4proto tcp reject with tcp reset
//			ip daddr 10.11.0.0/16 meta skuid != <uid> reject with icmp admin-prohibited
//			ip daddr 10.12.0.0/16 ...                      # the same two for LinkCIDR
//		}
//	}
//
// So: a guest never opens a connection to any address of the host (input),
// only the replies of connections the host opened come back; slots never
// reach each other (forward, slot to slot, which also covers a guest
// aiming at another slot's host address); nothing from outside the host
// opens a connection into a slot; guests reach no private network; and
// on the host itself only the agent's user (the effective uid of the
// process that created the pool: root in practice) opens connections to
// the slots (output): another local user's connect is refused, so
// an unprivileged process on the host cannot talk to a guest's envd or
// ports behind the proxy's back. The match is the socket's owner, not a
// mark set by the agent's dialers: every dialer of the agent (envd
// client, proxy, health checks) works unchanged, and a mark would add
// nothing against root, who can rewrite the table anyway. Replies (a host
// resolver answering a guest) and the kernel's own packets pass.
// Only traffic from interfaces named VethPrefix+anything is affected:
// the prefix is reserved for the pool. Nothing outside the table is
// changed. A host firewall whose forward chain drops by default (Docker
// sets iptables' FORWARD policy to DROP) must also accept traffic from
// and to "cvh*" for egress to work.
//
// The table of slot 1:
//
//	table ip capsule {
//		set allowed { type ipv4_addr; flags timeout; }   # learned by the slot's resolver
//		set denied  { type ipv4_addr; flags timeout; }
//		chain dns {
//			# while the rules name domains (else empty):
//			iifname "tap0" udp dport 53 dnat to 169.254.0.22:53
//			iifname "tap0" tcp dport 53 dnat to 169.254.0.22:53
//			iifname "tap0" tcp dport 80 dnat to 169.254.0.22:18080   # name check
//			iifname "tap0" tcp dport 443 dnat to 169.254.0.22:18443
//		}
//		chain prerouting {
//			type nat hook prerouting priority dstnat; policy accept;
//			iifname "tap0" jump dns
//			iifname "veth0" ip saddr 10.12.0.2 ip daddr 10.11.0.1 dnat to 169.254.0.21
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			oifname "veth0" ip saddr 169.254.0.21 snat to 10.11.0.1
//			oifname "veth0" ip saddr 10.12.0.3 snat to 10.11.0.1   # the name check's connections
//		}
//		chain input {
//			type filter hook input priority filter; policy drop;
//			ct state established,related accept
//			iifname "lo" accept
//			icmp type echo-request accept
//			iifname "tap0" ip daddr 169.254.0.22 udp|tcp dport 53 accept
//			iifname "tap0" ip daddr 169.254.0.22 tcp dport 18080|18443 accept
//		}
//		chain deny {
//			meta l4proto tcp reject with tcp reset
//			reject with icmp admin-prohibited
//		}
//		chain egress {                                  # the rules, see below
//			tcp dport 853 goto deny                     # with domains: no DNS over TLS,
//			udp dport 443 goto deny                     # no QUIC (its name is not readable)
//			ip daddr 10.0.0.0/8 goto deny               # egress.AlwaysDenied ...
//			ip daddr <allowOut CIDR> accept             # ...
//			ip daddr <denyOut CIDR> goto deny           # ...
//			ip daddr @allowed accept; goto deny         # "deny" default, or
//			ip daddr @denied goto deny; accept          # "allow" default
//		}
//		chain forward {
//			type filter hook forward priority filter; policy drop;
//			ct state established,related accept
//			iifname "veth0" oifname "tap0" ct status dnat accept
//			iifname "tap0" ip saddr != 169.254.0.21 drop
//			iifname "tap0" oifname "veth0" jump egress
//			iifname "tap0" reject with icmp admin-prohibited
//		}
//	}
//
// With egress off a guest reaches its gateway (ping) and nothing else: a
// new connection is refused at once (ECONNREFUSED for TCP, EHOSTUNREACH
// otherwise), while connections the host opened keep working. IPv6 is
// disabled in slot namespaces. Only connections from the host's end of the
// veth are translated to the guest, so nothing from outside opens a flow
// into the slot, even when the guest's flows were just forgotten.
//
// # Egress rules
//
// SetRules gives a slot its egress rules (package egress: allow and deny
// lists of CIDRs, addresses and domain names, and a default; SetEgress is
// SetRules with egress.Open or egress.Closed). They are enforced here, in
// the slot's namespace, outside the guest: the egress chain above, built
// from the rules and replaced in one transaction with the dns chain and the
// learned sets. Private and special ranges (egress.AlwaysDenied) are
// refused before any rule, and the host's own addresses by the host's input
// chain, so no rule opens them.
//
// Domain names work through the slot's resolver (resolver.go), which runs
// while the rules name domains: every DNS query of the guest (udp and tcp
// port 53, whatever server it names) is translated to it, on the gateway's
// port 53 in the slot's namespace, and DNS over TLS is refused. It answers
// NXDOMAIN for names the rules do not allow and forwards the others to
// Config.DNSUpstream (from the host's namespace); before the guest gets an
// answer, its addresses join the set "allowed" for the record's TTL
// (bounded to [1 min, 1 h]). With the "deny" default, those and the allowed
// CIDRs are all a guest reaches: a raw IP of a denied name, or an answer
// from a resolver of its own, gets it nowhere. With the "allow" default the
// resolver also resolves a denied name it refuses, and its addresses join
// "denied". Connections to ports 80 and 443 are also checked by the name
// they carry (peek.go): they go to the slot's peeker, which reads the HTTP
// Host or the TLS server name and splices the connection through only
// when the rules allow that name at that address, so an address shared by
// an allowed and a denied name (a CDN) does not open the denied one. Other
// ports are checked by address only; QUIC (udp 443) is refused while the
// rules name domains. A TLS client that names an allowed server but asks
// a shared front end for another site inside the encrypted stream (domain
// fronting) is not detected.
//
// A change applies to open connections too: the guest's conntrack entries
// are deleted, so the next packet of each of its flows is checked again
// as new (conntrack picks TCP up mid-stream) and a flow the new rules deny
// is refused (a TCP connection is reset). What the resolver learned stays
// for the rest of its TTL when the new rules still allow the name. Setting
// the rules a slot has already is a no-op; the first SetRules on a slot
// taken back with Claim rewrites the chains without touching the sets or
// the flows (the agent re-applying its record after a restart).
//
// # Lifecycle
//
// NewPool takes a lock file (<LockDir>/<Name>.netslot.lock, flock: the
// kernel drops it when the process dies), removes whatever matches the
// pool's names (namespaces <Name>-<n> in /run/netns, host interfaces
// <VethPrefix><n>, the table <Name>) since, holding the lock, it knows a
// dead pool left them, checks the ranges against the host's routes,
// installs the host table and enables forwarding. With Config.KeepSlots
// (the agent's setting) it keeps instead the complete slots it finds —
// VMs that outlived the agent still use them — for their owner to take
// back with Claim; DropUnclaimed then removes the rest.
//
// Acquire hands out a released slot when there is one, else creates one
// at the lowest free index: namespace (bind-mounted at /run/netns/<name>,
// /run/netns made a shared mount as iproute2 does), sysctls, lo, the
// persistent TAP (TUNSETPERSIST) with the gateway address, the slot table,
// the veth pair (created with its peer directly in the namespace), the
// host end's address and route, the slot end's address and default route.
// Each step has a rollback; a failure or a cancelled context leaves
// nothing. Release resets a slot for reuse (rules back to
// Config.EgressDefault, its resolver stopped, conntrack flushed in the namespace and for the
// host address on the host; the TAP stays). Destroy removes a slot and is
// idempotent. Close destroys every slot and the host table and releases
// the lock.
//
// A VM attaches with Slot.OpenTap, which opens the TAP (IFF_TAP|IFF_NO_PI)
// from a thread that entered the namespace and returns the descriptor for
// QEMU's -netdev tap,fd=N; the VMM process itself stays in the host
// namespace. Every namespace switch happens on a dedicated locked OS
// thread that exits afterwards, so no goroutine ever runs in a slot
// namespace by accident.
package netslot
