package logctx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
)

// The log keys this package attaches (one name per concept across the
// tree).
const (
	KeyRequestID = "request_id"
	KeyTeam      = "team"
	KeySandbox   = "sandbox"
)

// Header is the HTTP header by which a client names its request and by
// which the API echoes the ID it used.
const Header = "X-Request-Id"

// MaxIDLen bounds an accepted request ID.
const MaxIDLen = 128

type fieldsKey struct{}

// fields are the values a context carries for the log.
type fields struct {
	requestID, team, sandbox string
}

func get(ctx context.Context) fields {
	f, _ := ctx.Value(fieldsKey{}).(fields)
	return f
}

func with(ctx context.Context, f fields) context.Context {
	return context.WithValue(ctx, fieldsKey{}, f)
}

// WithRequestID returns ctx carrying the request ID id.
func WithRequestID(ctx context.Context, id string) context.Context {
	f := get(ctx)
	f.requestID = id
	return with(ctx, f)
}

// RequestID returns the request ID ctx carries, or "".
func RequestID(ctx context.Context) string { return get(ctx).requestID }

// WithTeam returns ctx carrying the team a request acts for.
func WithTeam(ctx context.Context, team string) context.Context {
	f := get(ctx)
	f.team = team
	return with(ctx, f)
}

// WithSandbox returns ctx carrying the sandbox a request is about.
func WithSandbox(ctx context.Context, sandbox string) context.Context {
	f := get(ctx)
	f.sandbox = sandbox
	return with(ctx, f)
}

// ValidID reports whether id may be taken as a request ID: 1 to MaxIDLen
// characters of [A-Za-z0-9._:-] (UUIDs, hex and base64url IDs, not a log
// line or a header injection).
func ValidID(id string) bool {
	if id == "" || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '_' || c == ':' || c == '-':
		default:
			return false
		}
	}
	return true
}

// NewID returns a fresh request ID: 16 random bytes in hex.
func NewID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail (Go 1.24+)
	return hex.EncodeToString(b)
}

// FromHTTP returns r's context with a request ID: the one the context
// carries already (an outer handler took it), else r's well-formed
// X-Request-Id, else a fresh one; and the ID.
func FromHTTP(r *http.Request) (context.Context, string) {
	ctx := r.Context()
	if id := RequestID(ctx); id != "" {
		return ctx, id
	}
	id := r.Header.Get(Header)
	if !ValidID(id) {
		id = NewID()
	}
	return WithRequestID(ctx, id), id
}

// Middleware serves next with a request ID in the context (FromHTTP),
// echoed in the response's X-Request-Id.
func Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, id := FromHTTP(r)
		w.Header().Set(Header, id)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Handler is an slog.Handler that adds the context's request ID, team and
// sandbox to every record it handles (those the record lacks).
type Handler struct {
	next slog.Handler
	// have are the keys the logger's own attributes (WithAttrs, outside
	// any group) set already.
	have fields
	// grouped: WithGroup was called; later attributes are the group's
	// and do not count as the record's own top-level keys.
	grouped bool
}

// NewHandler wraps next.
func NewHandler(next slog.Handler) *Handler { return &Handler{next: next} }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if ctx == nil {
		return h.next.Handle(ctx, r)
	}
	f := get(ctx)
	if f == (fields{}) {
		return h.next.Handle(ctx, r)
	}
	var own fields
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case KeyRequestID:
			own.requestID = "x"
		case KeyTeam:
			own.team = "x"
		case KeySandbox:
			own.sandbox = "x"
		}
		return true
	})
	var add []slog.Attr
	if f.requestID != "" && own.requestID == "" && h.have.requestID == "" {
		add = append(add, slog.String(KeyRequestID, f.requestID))
	}
	if f.team != "" && own.team == "" && h.have.team == "" {
		add = append(add, slog.String(KeyTeam, f.team))
	}
	if f.sandbox != "" && own.sandbox == "" && h.have.sandbox == "" {
		add = append(add, slog.String(KeySandbox, f.sandbox))
	}
	if len(add) == 0 {
		return h.next.Handle(ctx, r)
	}
	r = r.Clone()
	r.AddAttrs(add...)
	return h.next.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	if !h.grouped {
		for _, a := range attrs {
			switch a.Key {
			case KeyRequestID:
				c.have.requestID = "x"
			case KeyTeam:
				c.have.team = "x"
			case KeySandbox:
				c.have.sandbox = "x"
			}
		}
	}
	c.next = h.next.WithAttrs(attrs)
	return &c
}

// WithGroup implements slog.Handler. The context's fields then land in the
// group, as every attribute of the record does.
func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	c.grouped = true
	c.next = h.next.WithGroup(name)
	return &c
}

// AtLeast returns l passing on only records at level min or above: for a
// library whose Info records are routine chatter (River logs its
// producers' job counts every few seconds), so that its warnings and
// errors still reach the log and the rest does not bury the platform's own.
func AtLeast(l *slog.Logger, min slog.Level) *slog.Logger {
	return slog.New(minLevel{next: l.Handler(), min: min})
}

// minLevel is AtLeast's handler.
type minLevel struct {
	next slog.Handler
	min  slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.next.Enabled(ctx, l)
}

func (h minLevel) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < h.min {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{next: h.next.WithAttrs(as), min: h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{next: h.next.WithGroup(name), min: h.min}
}
