package netslot

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Expression helpers: each returns the expressions of one nft match or
// statement, written in nft syntax in its comment. They all use register 1.

// ifname is an exact interface-name match value (NUL-padded to IFNAMSIZ).
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// ifprefix is a wildcard interface-name match value ("cvh*"): the cmp
// compares only the prefix's bytes.
func ifprefix(prefix string) []byte { return []byte(prefix) }

// iif: iifname <op> <data>
func iif(op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// oif: oifname <op> <data>
func oif(op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// ctBits: ct <key> & bits != 0 (ct state established,related / ct status dnat)
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits),
			Xor:  make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ctEstablished: ct state established,related
func ctEstablished() []expr.Any {
	return ctBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits.
const ipsDstNAT = 1 << 5

// ctDNAT: ct status dnat
func ctDNAT() []expr.Any { return ctBits(expr.CtKeySTATUS, ipsDstNAT) }

// IPv4 header offsets.
const (
	ipSaddrOff = 12
	ipDaddrOff = 16
)

// ipAddr: ip saddr|daddr <op> <a>
func ipAddr(off uint32, op expr.CmpOp, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: a.AsSlice()},
	}
}

// ipInNet: ip saddr|daddr <op> <p> (a prefix)
func ipInNet(off uint32, op expr.CmpOp, p netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	if p.Bits() == 0 {
		mask = make([]byte, 4)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// skuid: meta skuid <op> <uid> (the user owning the packet's socket; a
// packet without one does not match)
func skuid(op expr.CmpOp, uid uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uid)},
	}
}

// l4proto: meta l4proto <proto>
func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// dport: th dport <port> (after an l4proto match for tcp or udp)
func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// icmpEchoRequest: icmp type echo-request
func icmpEchoRequest() []expr.Any {
	return append(l4proto(unix.IPPROTO_ICMP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
	)
}

// natTo: dnat|snat to <a>
func natTo(t expr.NATType, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a.AsSlice()},
		&expr.NAT{Type: t, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

// masquerade: masquerade
func masquerade() expr.Any { return &expr.Masq{} }

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }
func drop() expr.Any   { return &expr.Verdict{Kind: expr.VerdictDrop} }

// jump: jump <chain>
func jump(chain string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

// icmpPktFiltered is ICMP destination-unreachable code 13,
// "communication administratively prohibited".
const icmpPktFiltered = 13

// rejectAdmin: reject with icmp type admin-prohibited
func rejectAdmin() expr.Any {
	return &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPktFiltered}
}

// rejectReset: reject with tcp reset (after a tcp match)
func rejectReset() expr.Any { return &expr.Reject{Type: unix.NFT_REJECT_TCP_RST} }

// rule concatenates matches and statements.
func rule(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		default:
			panic("netslot: rule part of unknown type")
		}
	}
	return out
}
