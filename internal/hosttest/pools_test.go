package hosttest

import (
	"net/netip"
	"strings"
	"testing"
)

// TestPoolsDisjoint: no two pools of the table (nor a reserved range)
// share a namespace prefix, an interface prefix or an address, so the
// packages' VM tests can run at the same time.
func TestPoolsDisjoint(t *testing.T) {
	all := append(append([]Pool{}, pools...), reserved...)
	for i, a := range all {
		for _, b := range all[i+1:] {
			t.Run(a.Name+"/"+b.Name, func(t *testing.T) {
				if strings.HasPrefix(a.Name+"-", b.Name+"-") || strings.HasPrefix(b.Name+"-", a.Name+"-") {
					t.Errorf("namespace prefixes %s- and %s- overlap", a.Name, b.Name)
				}
				if strings.HasPrefix(a.Veth, b.Veth) || strings.HasPrefix(b.Veth, a.Veth) {
					t.Errorf("interface prefixes %s and %s overlap", a.Veth, b.Veth)
				}
				for _, pa := range []netip.Prefix{a.HostCIDR, a.LinkCIDR} {
					for _, pb := range []netip.Prefix{b.HostCIDR, b.LinkCIDR} {
						if pa.Overlaps(pb) {
							t.Errorf("%s's %s and %s's %s overlap", a.Name, pa, b.Name, pb)
						}
					}
				}
			})
		}
	}
}
