package logctx

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// capture returns a logger through Handler into a JSON buffer, and a
// function that decodes the lines logged so far.
func capture(t *testing.T) (*slog.Logger, func() []map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewJSONHandler(&buf, nil)))
	return log, func() []map[string]any {
		var out []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			if l == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			out = append(out, m)
		}
		return out
	}
}

func TestHandlerAddsContextFields(t *testing.T) {
	full := WithSandbox(WithTeam(WithRequestID(context.Background(), "req-1"), "team-a"), "sbx-1")
	for _, tc := range []struct {
		name string
		log  func(*slog.Logger)
		want map[string]any // key → value; nil value: key absent
	}{
		{"no fields in the context", func(l *slog.Logger) { l.InfoContext(context.Background(), "m") },
			map[string]any{KeyRequestID: nil, KeyTeam: nil, KeySandbox: nil}},
		{"logged without a context", func(l *slog.Logger) { l.Info("m") },
			map[string]any{KeyRequestID: nil}},
		{"request ID only", func(l *slog.Logger) { l.InfoContext(WithRequestID(context.Background(), "r"), "m") },
			map[string]any{KeyRequestID: "r", KeyTeam: nil, KeySandbox: nil}},
		{"all fields", func(l *slog.Logger) { l.WarnContext(full, "m") },
			map[string]any{KeyRequestID: "req-1", KeyTeam: "team-a", KeySandbox: "sbx-1"}},
		{"the record's own sandbox wins", func(l *slog.Logger) { l.InfoContext(full, "m", KeySandbox, "sbx-2") },
			map[string]any{KeyRequestID: "req-1", KeySandbox: "sbx-2"}},
		{"the logger's own team wins", func(l *slog.Logger) { l.With(KeyTeam, "team-b").InfoContext(full, "m") },
			map[string]any{KeyTeam: "team-b", KeyRequestID: "req-1"}},
		{"fields inside a group", func(l *slog.Logger) { l.WithGroup("g").InfoContext(full, "m") },
			map[string]any{"g": map[string]any{KeyRequestID: "req-1", KeyTeam: "team-a", KeySandbox: "sbx-1"}}},
		{"later values in the context replace earlier ones", func(l *slog.Logger) {
			l.InfoContext(WithRequestID(full, "req-2"), "m")
		}, map[string]any{KeyRequestID: "req-2", KeyTeam: "team-a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, lines := capture(t)
			tc.log(log)
			got := lines()
			if len(got) != 1 {
				t.Fatalf("want 1 line, got %d: %v", len(got), got)
			}
			for k, v := range tc.want {
				gv, ok := got[0][k]
				switch {
				case v == nil && ok:
					t.Errorf("key %q: want absent, got %v", k, gv)
				case v != nil && !equalJSON(gv, v):
					t.Errorf("key %q: want %v, got %v (line %v)", k, v, gv, got[0])
				}
			}
		})
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func TestHandlerKeepsLevel(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ctx := WithRequestID(context.Background(), "r")
	log.InfoContext(ctx, "hidden")
	log.WarnContext(ctx, "shown")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, "request_id=r") {
		t.Errorf("want only the warning, with request_id=r; got %q", got)
	}
}

func TestValidID(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   string
		want bool
	}{
		{"uuid", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", true},
		{"hex", NewID(), true},
		{"punctuation allowed", "a.b_c:d-e", true},
		{"empty", "", false},
		{"longest", strings.Repeat("a", MaxIDLen), true},
		{"too long", strings.Repeat("a", MaxIDLen+1), false},
		{"space", "a b", false},
		{"newline (log injection)", "a\nlevel=ERROR", false},
		{"equals and quote", `a="b"`, false},
		{"non-ASCII", "réq", false},
		{"slash", "a/b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ValidID(tc.id); got != tc.want {
				t.Errorf("ValidID(%q) = %v, want %v", tc.id, got, tc.want)
			}
		})
	}
}

func TestNewIDIsFreshAndValid(t *testing.T) {
	a, b := NewID(), NewID()
	if a == b || !ValidID(a) || len(a) != 32 {
		t.Errorf("NewID gave %q and %q: want two different valid 32-character IDs", a, b)
	}
}

func TestMiddleware(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header string
		outer  string // an ID an outer handler put in the context
		want   string // "" → a generated ID
	}{
		{name: "well-formed ID is taken", header: "client-42", want: "client-42"},
		{name: "none sent: generated"},
		{name: "malformed: generated", header: "bad id\r\nx"},
		{name: "too long: generated", header: strings.Repeat("x", MaxIDLen+1)},
		{name: "an outer handler's ID wins", header: "client-42", outer: "outer-1", want: "outer-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen string
			h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = RequestID(r.Context())
			}))
			r := httptest.NewRequest("GET", "/", nil)
			if tc.header != "" {
				r.Header.Set(Header, tc.header)
			}
			if tc.outer != "" {
				r = r.WithContext(WithRequestID(r.Context(), tc.outer))
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			echo := rec.Header().Get(Header)
			if seen != echo {
				t.Errorf("context has %q, response header %q: want the same", seen, echo)
			}
			if tc.want != "" && seen != tc.want {
				t.Errorf("request ID %q, want %q", seen, tc.want)
			}
			if tc.want == "" && (!ValidID(seen) || seen == tc.header) {
				t.Errorf("want a generated ID, got %q", seen)
			}
		})
	}
}

// TestAtLeast: records under the level are dropped, the others pass with
// the logger's attributes and groups.
func TestAtLeast(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := AtLeast(base, slog.LevelWarn).With("component", "river").WithGroup("g")
	for _, tc := range []struct {
		name  string
		level slog.Level
		pass  bool
	}{
		{"debug", slog.LevelDebug, false},
		{"info", slog.LevelInfo, false},
		{"warn", slog.LevelWarn, true},
		{"error", slog.LevelError, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf.Reset()
			if got := l.Enabled(context.Background(), tc.level); got != tc.pass {
				t.Errorf("Enabled = %v, want %v", got, tc.pass)
			}
			l.Log(context.Background(), tc.level, "msg", "k", "v")
			out := buf.String()
			if (out != "") != tc.pass {
				t.Fatalf("logged %q, want a record: %v", out, tc.pass)
			}
			if tc.pass && (!strings.Contains(out, "component=river") || !strings.Contains(out, "g.k=v")) {
				t.Errorf("record without the logger's attributes and group: %q", out)
			}
		})
	}
}
