package service

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// A sandbox's logs are what the platform records of it: its lifecycle
// events (the audit log's rows of the sandbox: created, paused, resumed,
// destroyed, its timeouts, network changes) and its serial console, where
// the kernel and envd (the guest's PID 1, logging to stderr in slog's
// text format) write. The host keeps the console in the sandbox's
// directory while the sandbox exists (GetSandboxConsole, revision 8); its
// destroy answers the console's tail, which is stored (sandbox_logs, at
// most ConsoleKeep bytes a sandbox) and pruned after LogsRetention.

// Log sources and levels.
const (
	LogSourceLifecycle = "lifecycle"
	LogSourceEnvd      = "envd"
	LogSourceConsole   = "console"
)

// LogLevels are the levels of log entries, least severe first.
var LogLevels = []string{"debug", "info", "warn", "error"}

// Log bounds.
const (
	// ConsoleKeep bounds the console tail kept of a destroyed sandbox.
	ConsoleKeep = 256 << 10
	// LogsRetention is how long a destroyed sandbox's console is kept.
	LogsRetention = 30 * 24 * time.Hour
	// MaxLogPage bounds a page of log entries; DefaultLogPage is a page's
	// size when the caller names none.
	MaxLogPage     = 1000
	DefaultLogPage = 100
	// maxLogSearch bounds a search string; maxLogMessage a message (a
	// longer console line is cut, marked with "…").
	maxLogSearch  = 256
	maxLogMessage = 8 << 10
)

// LogEntry is one entry of a sandbox's logs.
type LogEntry struct {
	Time time.Time
	// Level is one of LogLevels.
	Level string
	// Source is LogSourceLifecycle, LogSourceEnvd or LogSourceConsole.
	Source string
	// Message is the line as text: valid UTF-8 without control characters
	// (but tabs) or terminal escape sequences.
	Message string
	// Fields are the entry's structured details (an event's actor and
	// metadata; envd's key=value pairs).
	Fields map[string]string
	// key orders entries: time, then source, then the entry's index in
	// its source.
	key logKey
}

type logKey struct {
	us    int64
	rank  int
	index int
}

func (a logKey) cmp(b logKey) int {
	switch {
	case a.us != b.us:
		return cmpInt(a.us, b.us)
	case a.rank != b.rank:
		return cmpInt(int64(a.rank), int64(b.rank))
	}
	return cmpInt(int64(a.index), int64(b.index))
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// LogQuery selects a page of a sandbox's logs.
type LogQuery struct {
	// Start: entries at or after it (Backward: at or before it); zero:
	// from the first (Backward: the last).
	Start time.Time
	// Cursor continues a previous page (it overrides Start), in the same
	// direction.
	Cursor string
	// Limit is the page size (0: DefaultLogPage; at most MaxLogPage).
	Limit int
	// Backward pages from the newest to the oldest.
	Backward bool
	// MinLevel: entries of this level or a more severe one ("": any).
	MinLevel string
	// Search: entries whose message contains it, ignoring case.
	Search string
}

// Logs returns a page of the logs of a sandbox of p's team, in any state
// (a destroyed one's while its record is kept); next continues it ("" at
// the end of what there is now).
func (s *Sandboxes) Logs(ctx context.Context, p Principal, id SandboxID, q LogQuery) (entries []LogEntry, next string, err error) {
	minLevel := 0
	if q.MinLevel != "" {
		if minLevel = slices.Index(LogLevels, q.MinLevel); minLevel < 0 {
			return nil, "", errorf(ErrInvalid, "level: one of %s", strings.Join(LogLevels, ", "))
		}
	}
	if len(q.Search) > maxLogSearch {
		return nil, "", errorf(ErrInvalid, "search: at most %d bytes", maxLogSearch)
	}
	if q.Limit < 0 || q.Limit > MaxLogPage {
		return nil, "", errorf(ErrInvalid, "limit: 1 to %d", MaxLogPage)
	}
	if q.Limit == 0 {
		q.Limit = DefaultLogPage
	}
	var after *logKey
	if q.Cursor != "" {
		k, err := decodeLogCursor(q.Cursor, q.Backward)
		if err != nil {
			return nil, "", err
		}
		after = &k
	}
	row, err := s.get(ctx, p, id)
	if err != nil {
		return nil, "", err
	}
	all, err := s.sandboxLogs(ctx, row)
	if err != nil {
		return nil, "", err
	}
	return pageLogs(all, q, minLevel, after)
}

// pageLogs selects a page of entries (sorted by key) for q.
func pageLogs(all []LogEntry, q LogQuery, minLevel int, after *logKey) (entries []LogEntry, next string, err error) {
	search := strings.ToLower(q.Search)
	match := func(e LogEntry) bool {
		if slices.Index(LogLevels, e.Level) < minLevel {
			return false
		}
		if search != "" && !strings.Contains(strings.ToLower(e.Message), search) {
			return false
		}
		switch {
		case after != nil && !q.Backward:
			return e.key.cmp(*after) > 0
		case after != nil:
			return e.key.cmp(*after) < 0
		case !q.Start.IsZero() && !q.Backward:
			return !e.Time.Before(q.Start)
		case !q.Start.IsZero():
			return !e.Time.After(q.Start)
		}
		return true
	}
	order := all
	if q.Backward {
		order = slices.Clone(all)
		slices.Reverse(order)
	}
	entries = []LogEntry{}
	for _, e := range order {
		if !match(e) {
			continue
		}
		if len(entries) == q.Limit {
			last := entries[len(entries)-1].key
			return entries, encodeLogCursor(last, q.Backward), nil
		}
		entries = append(entries, e)
	}
	return entries, "", nil
}

// sandboxLogs gathers every entry of a sandbox, sorted by key.
func (s *Sandboxes) sandboxLogs(ctx context.Context, row db.Sandbox) ([]LogEntry, error) {
	events, err := s.st.Queries().ListSandboxEvents(ctx, db.ListSandboxEventsParams{TeamID: row.TeamID, ResourceID: ID(row.ID)})
	if err != nil {
		return nil, fmt.Errorf("sandbox events: %w", err)
	}
	slices.Reverse(events)
	out := make([]LogEntry, 0, len(events))
	for i, ev := range events {
		out = append(out, eventEntry(ev, i))
	}
	console, err := s.consoleOf(ctx, row)
	if err != nil {
		return nil, err
	}
	out = append(out, parseConsole(console, row.CreatedAt)...)
	slices.SortStableFunc(out, func(a, b LogEntry) int { return a.key.cmp(b.key) })
	return out, nil
}

// consoleOf reads a sandbox's console: the host's while the sandbox
// exists there, else the tail stored at its destroy (none: nil). A host
// that cannot answer leaves the console out rather than fail the
// lifecycle events with it.
func (s *Sandboxes) consoleOf(ctx context.Context, row db.Sandbox) ([]byte, error) {
	switch row.State {
	case store.SandboxStopped, store.SandboxError, store.SandboxMissing:
		// Destroyed (or never made, or gone from its host): what was kept.
	default:
		if c, err := s.agentFor(ctx, row.HostID); err == nil {
			actx, cancel := context.WithTimeout(ctx, agentCallTimeout)
			r, err := c.GetSandboxConsole(actx, connect.NewRequest(&pb.GetSandboxConsoleRequest{SandboxId: ID(row.ID), MaxBytes: ConsoleKeep}))
			cancel()
			if err == nil {
				return r.Msg.GetConsole().GetData(), nil
			}
			if !errors.Is(err, agentclient.ErrNotFound) {
				s.log.WarnContext(ctx, "read a sandbox's console", "sandbox", ID(row.ID), "err", err)
			}
		}
	}
	kept, err := s.st.Queries().GetSandboxConsole(ctx, row.ID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stored console: %w", err)
	}
	return kept.Console, nil
}

// storeConsole keeps the console tail of a destroyed sandbox (its
// destroy's answer), at most ConsoleKeep bytes from a line on; a failure
// is logged (the destroy stands).
func (s *Sandboxes) storeConsole(ctx context.Context, id pgtype.UUID, c *pb.ConsoleTail) {
	if c == nil {
		return
	}
	data, truncated := c.GetData(), c.GetTruncated()
	if len(data) > ConsoleKeep {
		data, truncated = data[len(data)-ConsoleKeep:], true
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	if data == nil {
		data = []byte{}
	}
	if err := s.st.Queries().SaveSandboxConsole(ctx, db.SaveSandboxConsoleParams{SandboxID: id, Console: data, Truncated: truncated}); err != nil {
		s.log.ErrorContext(ctx, "keep a destroyed sandbox's console", "sandbox", ID(id), "err", err)
	}
}

// PruneLogs deletes the stored consoles saved before before and returns
// how many went.
func (s *Sandboxes) PruneLogs(ctx context.Context, before time.Time) (int64, error) {
	n, err := s.st.Queries().PruneSandboxLogs(ctx, before)
	if err != nil {
		return 0, fmt.Errorf("prune logs: %w", err)
	}
	return n, nil
}

// lifecycleMessages are the lifecycle events' messages by action.
var lifecycleMessages = map[string]string{
	"sandbox.create":       "sandbox created",
	"sandbox.destroy":      "sandbox killed",
	"sandbox.pause":        "sandbox paused",
	"sandbox.resume":       "sandbox resumed",
	"sandbox.auto_pause":   "sandbox paused at its timeout",
	"sandbox.auto_destroy": "sandbox killed at its timeout",
	"sandbox.set_timeout":  "sandbox timeout changed",
	"sandbox.set_network":  "sandbox network rules changed",
	"sandbox.reconcile":    "sandbox state reconciled with its host",
}

func eventEntry(ev db.AuditLog, index int) LogEntry {
	msg, ok := lifecycleMessages[ev.Action]
	if !ok {
		msg = strings.ReplaceAll(strings.TrimPrefix(ev.Action, "sandbox."), "_", " ")
		msg = "sandbox " + msg
	}
	level := "info"
	switch ev.Status {
	case AuditError:
		level, msg = "error", msg+" (failed)"
	case AuditWarning:
		level = "warn"
	}
	fields := map[string]string{"source": LogSourceLifecycle, "event": ev.Action, "actor": ev.ActorName}
	var md map[string]any
	if json.Unmarshal(ev.Metadata, &md) == nil {
		for k, v := range md {
			if _, taken := fields[k]; taken {
				continue
			}
			if str, ok := v.(string); ok {
				fields[k] = cleanLogText(str)
			} else if b, err := json.Marshal(v); err == nil {
				fields[k] = cleanLogText(string(b))
			}
		}
	}
	return LogEntry{Time: ev.CreatedAt.UTC(), Level: level, Source: LogSourceLifecycle, Message: msg, Fields: fields,
		key: logKey{us: ev.CreatedAt.UnixMicro(), rank: 0, index: index}}
}

// parseConsole turns console output into entries, one a line. envd's
// lines (slog text: time=… level=… msg=… k=v…) carry their time and level;
// other lines (the kernel's, anything written to the console) take the
// time of the last timed line before them (the sandbox's creation before
// the first), so times never go back within the console.
func parseConsole(data []byte, created time.Time) []LogEntry {
	var out []LogEntry
	at := created.UTC()
	index := 0
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		text := cleanLogText(string(line))
		if strings.TrimSpace(text) == "" {
			continue
		}
		e := LogEntry{Level: "info", Source: LogSourceConsole, Message: text, Fields: map[string]string{"source": LogSourceConsole}}
		if kv, ok := parseLogfmt(text); ok {
			if t, err := time.Parse(time.RFC3339Nano, kv["time"]); err == nil {
				if t.After(at) {
					at = t.UTC()
				}
				e.Source, e.Fields["source"] = LogSourceEnvd, LogSourceEnvd
				e.Message = kv["msg"]
				e.Level = slogLevel(kv["level"])
				for k, v := range kv {
					if k != "time" && k != "level" && k != "msg" && k != "source" {
						e.Fields[k] = v
					}
				}
			}
		}
		if len(e.Message) > maxLogMessage {
			e.Message = strings.ToValidUTF8(e.Message[:maxLogMessage], "") + "…"
		}
		e.Time = at
		e.key = logKey{us: at.UnixMicro(), rank: 1, index: index}
		index++
		out = append(out, e)
	}
	return out
}

// slogLevel maps slog's level names (INFO, WARN+2, …) to LogLevels.
func slogLevel(s string) string {
	s = strings.ToUpper(s)
	switch {
	case strings.HasPrefix(s, "DEBUG"):
		return "debug"
	case strings.HasPrefix(s, "WARN"):
		return "warn"
	case strings.HasPrefix(s, "ERROR"):
		return "error"
	}
	return "info"
}

// parseLogfmt parses a line of key=value pairs (values bare or
// double-quoted with Go escapes), as slog's text handler writes; ok is
// false unless the whole line parses and has time and msg.
func parseLogfmt(line string) (map[string]string, bool) {
	kv := map[string]string{}
	rest := strings.TrimSpace(line)
	for rest != "" {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 || strings.ContainsAny(rest[:eq], " \t\"") {
			return nil, false
		}
		key := rest[:eq]
		rest = rest[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := 1
			for ; end < len(rest); end++ {
				if rest[end] == '\\' {
					end++
					continue
				}
				if rest[end] == '"' {
					break
				}
			}
			if end >= len(rest) {
				return nil, false
			}
			v, err := strconv.Unquote(rest[:end+1])
			if err != nil {
				return nil, false
			}
			val, rest = v, rest[end+1:]
		} else {
			sp := strings.IndexAny(rest, " \t")
			if sp < 0 {
				sp = len(rest)
			}
			val, rest = rest[:sp], rest[sp:]
		}
		kv[key] = cleanLogText(val)
		rest = strings.TrimLeft(rest, " \t")
	}
	_, hasTime := kv["time"]
	_, hasMsg := kv["msg"]
	return kv, hasTime && hasMsg
}

// cleanLogText makes guest output safe to show as text: invalid UTF-8
// replaced, terminal escape sequences (CSI, OSC) and control characters
// but tabs removed, a trailing CR dropped.
func cleanLogText(s string) string {
	s = strings.ToValidUTF8(strings.TrimSuffix(s, "\r"), "\uFFFD")
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b && i+1 < len(s) && s[i+1] == '[': // CSI: ESC [ params final
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = min(j+1, len(s))
			continue
		case r == 0x1b && i+1 < len(s) && s[i+1] == ']': // OSC: ESC ] … BEL or ESC \
			j := i + 2
			for j < len(s) && s[j] != 0x07 && !(s[j] == 0x1b && j+1 < len(s) && s[j+1] == '\\') {
				j++
			}
			if j < len(s) && s[j] == 0x1b {
				j++
			}
			i = min(j+1, len(s))
			continue
		case r == '\t' || !unicode.IsControl(r):
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// A log cursor: base64url of "<unix µs>.<source rank>.<index>", with
// ".b" appended for a backward page.
func encodeLogCursor(k logKey, backward bool) string {
	c := fmt.Sprintf("%d.%d.%d", k.us, k.rank, k.index)
	if backward {
		c += ".b"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(c))
}

func decodeLogCursor(c string, backward bool) (logKey, error) {
	bad := errorf(ErrInvalid, "cursor: malformed")
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return logKey{}, bad
	}
	parts := strings.Split(string(b), ".")
	switch {
	case len(parts) == 4 && parts[3] == "b" && backward, len(parts) == 3 && !backward:
	case len(parts) == 3 || len(parts) == 4 && parts[3] == "b":
		return logKey{}, errorf(ErrInvalid, "cursor: it continues a page in the other direction")
	default:
		return logKey{}, bad
	}
	var n [3]int64
	for i := range n {
		if n[i], err = strconv.ParseInt(parts[i], 10, 64); err != nil {
			return logKey{}, bad
		}
	}
	return logKey{us: n[0], rank: int(n[1]), index: int(n[2])}, nil
}
