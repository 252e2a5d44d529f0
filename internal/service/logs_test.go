package service

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCleanLogText(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "hello world", "hello world"},
		{"tab kept, CR dropped", "a\tb\r", "a\tb"},
		{"CSI colour", "\x1b[31mred\x1b[0m text", "red text"},
		{"CSI cursor moves", "\x1b[2J\x1b[1;1Hclear", "clear"},
		{"OSC title with BEL", "\x1b]0;title\x07after", "after"},
		{"OSC title with ST", "\x1b]2;title\x1b\\after", "after"},
		{"controls", "a\x00b\x07c\x08d\x7f", "abcd"},
		{"invalid UTF-8", "ok\xff\xfeend", "ok\uFFFDend"},
		{"markup stays text", "<script>alert(1)</script>", "<script>alert(1)</script>"},
		{"unterminated CSI", "x\x1b[31", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cleanLogText(tc.in); got != tc.want {
				t.Fatalf("%q: got %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseConsole(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	console := strings.Join([]string{
		"[    0.000000] Linux version 6.1",
		"",
		`time=2026-01-02T03:04:07.5Z level=INFO msg="envd listening" port=49983`,
		"a line of the guest",
		`time=2026-01-02T03:04:06Z level=WARN+2 msg="clock went back" reason="a \"quoted\" value"`,
		`time=2026-01-02T03:04:09Z level=ERROR msg=failed err=boom`,
		"time=not-a-time msg=x",
		"no newline at the end",
	}, "\n")
	got := parseConsole([]byte(console), created)
	type row struct {
		at          time.Time
		level, src  string
		msg         string
		fieldsCheck map[string]string
	}
	t7 := created.Add(2500 * time.Millisecond)
	t9 := created.Add(4 * time.Second)
	want := []row{
		{created, "info", LogSourceConsole, "[    0.000000] Linux version 6.1", nil},
		{t7, "info", LogSourceEnvd, "envd listening", map[string]string{"port": "49983", "source": "envd"}},
		{t7, "info", LogSourceConsole, "a line of the guest", nil},
		// Its own time is earlier: the console's time does not go back.
		{t7, "warn", LogSourceEnvd, "clock went back", map[string]string{"reason": `a "quoted" value`}},
		{t9, "error", LogSourceEnvd, "failed", map[string]string{"err": "boom"}},
		{t9, "info", LogSourceConsole, "time=not-a-time msg=x", nil},
		{t9, "info", LogSourceConsole, "no newline at the end", nil},
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if !g.Time.Equal(w.at) || g.Level != w.level || g.Source != w.src || g.Message != w.msg || g.Fields["source"] != w.src {
			t.Errorf("entry %d: %+v, want %+v", i, g, w)
		}
		for k, v := range w.fieldsCheck {
			if g.Fields[k] != v {
				t.Errorf("entry %d: field %s = %q, want %q", i, k, g.Fields[k], v)
			}
		}
		if i > 0 && got[i-1].key.cmp(g.key) >= 0 {
			t.Errorf("entry %d does not sort after %d", i, i-1)
		}
	}
	// A line longer than the cap is cut.
	long := parseConsole(bytes.Repeat([]byte("é"), maxLogMessage), created)
	if len(long) != 1 || len(long[0].Message) > maxLogMessage+len("…") || !strings.HasSuffix(long[0].Message, "…") {
		t.Fatalf("long line: %d bytes", len(long[0].Message))
	}
}

// TestPageLogs: pages forward and backward through entries, many at the
// same time, see each once in order; filters apply before the limit.
func TestPageLogs(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var all []LogEntry
	for i := range 23 {
		at := base.Add(time.Duration(i/5) * time.Second) // five entries a second
		level := LogLevels[i%len(LogLevels)]
		all = append(all, LogEntry{Time: at, Level: level, Message: fmt.Sprintf("line %02d", i),
			key: logKey{us: at.UnixMicro(), rank: 1, index: i}})
	}
	collect := func(t *testing.T, q LogQuery, minLevel int) []string {
		t.Helper()
		var out []string
		var after *logKey
		for pages := 0; ; pages++ {
			if pages > len(all)+1 {
				t.Fatal("paging does not end")
			}
			got, next, err := pageLogs(all, q, minLevel, after)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) > q.Limit {
				t.Fatalf("%d entries on a page of %d", len(got), q.Limit)
			}
			for _, e := range got {
				out = append(out, e.Message)
			}
			if next == "" {
				return out
			}
			k, err := decodeLogCursor(next, q.Backward)
			if err != nil {
				t.Fatal(err)
			}
			after = &k
		}
	}
	names := func(pred func(i int) bool) []string {
		var out []string
		for i := range all {
			if pred(i) {
				out = append(out, all[i].Message)
			}
		}
		return out
	}
	everything := names(func(int) bool { return true })
	reversed := slices.Clone(everything)
	slices.Reverse(reversed)
	for _, tc := range []struct {
		name     string
		q        LogQuery
		minLevel int
		want     []string
	}{
		{"forward by 1", LogQuery{Limit: 1}, 0, everything},
		{"forward by 4", LogQuery{Limit: 4}, 0, everything},
		{"backward by 3", LogQuery{Limit: 3, Backward: true}, 0, reversed},
		{"warn and up", LogQuery{Limit: 2}, 2, names(func(i int) bool { return i%4 >= 2 })},
		{"search", LogQuery{Limit: 2, Search: "LINE 1"}, 0, names(func(i int) bool { return i >= 10 && i < 20 })},
		{"from a time", LogQuery{Limit: 5, Start: base.Add(3 * time.Second)}, 0, everything[15:]},
		{"backward from a time", LogQuery{Limit: 5, Start: base.Add(time.Second), Backward: true}, 0, reversed[len(reversed)-10:]},
		{"nothing matches", LogQuery{Limit: 5, Search: "nope"}, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := collect(t, tc.q, tc.minLevel); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// A cursor continues its own direction only; garbage is refused.
	fwd := encodeLogCursor(all[3].key, false)
	if _, err := decodeLogCursor(fwd, true); err == nil {
		t.Fatal("a forward cursor continued backward")
	}
	for _, c := range []string{"!!", "eA", encodeLogCursor(all[3].key, true) + "x"} {
		if _, err := decodeLogCursor(c, false); err == nil {
			t.Fatalf("cursor %q accepted", c)
		}
	}
}
