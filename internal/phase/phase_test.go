package phase

import (
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	begin := time.Now()
	c := Start()
	if d := c.Mark("one"); d < 0 || d > time.Since(begin) {
		t.Fatalf("one took %v", d)
	}
	c.Add(Phase{Name: "remote", Took: time.Second})
	c.Mark("two")
	ps := c.Phases()
	if len(ps) != 3 || ps[0].Name != "one" || ps[1] != (Phase{"remote", time.Second}) || ps[2].Name != "two" || ps[2].Took >= time.Second {
		t.Fatalf("phases %+v", ps)
	}
	var none *Clock
	if none.Mark("x") != 0 || none.Phases() != nil {
		t.Fatal("a nil clock recorded")
	}
	none.Add(Phase{Name: "y"})
}
