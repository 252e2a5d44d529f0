package kmod

import (
	"reflect"
	"testing"
)

func TestName(t *testing.T) {
	tests := map[string]string{
		"virtio-net.ko.xz":           "virtio_net",
		"virtio_net":                 "virtio_net",
		"/lib/modules/x/failover.ko": "failover",
		" net_failover.ko.zst ":      "net_failover",
		"kernel/drivers/a-b-c.ko.gz": "a_b_c",
	}
	for in, want := range tests {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
	if !IsModuleFile("a.ko") || !IsModuleFile("a.ko.xz") || IsModuleFile("modules.order") {
		t.Error("IsModuleFile")
	}
}

func TestParseModinfo(t *testing.T) {
	got := ParseModinfo([]byte("alias=a\x00alias=b\x00depends=x,y\x00\x00=novalue\x00noequals\x00name=m\x00"))
	want := map[string]string{"alias": "b", "depends": "x,y", "name": "m"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := splitDepends(" a, b-c ,,"); !reflect.DeepEqual(got, []string{"a", "b_c"}) {
		t.Errorf("splitDepends = %v", got)
	}
	if got := splitDepends(""); got != nil {
		t.Errorf("splitDepends of nothing = %v", got)
	}
}
