package capsule

import (
	"context"
	"iter"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// ForkOptions asks for running copies of a sandbox.
type ForkOptions struct {
	// Count is the number of forks (0: one; at most 16).
	Count int
	// Timeout is each fork's idle timeout (0: the source's).
	Timeout time.Duration
}

// ForkResult is one requested fork: its sandbox, or why it failed (a
// failed fork leaves nothing running).
type ForkResult struct {
	Sandbox *Sandbox `json:"sandbox,omitempty"`
	Err     error    `json:"-"`
}

// Forks is the answer of Fork.
type Forks struct {
	// SourceHold is how long the source's guest was stopped while its
	// memory was saved; it runs on.
	SourceHold time.Duration
	// Results has one entry per requested fork, in order.
	Results []ForkResult
}

// Fork makes running copies of the running sandbox id on its host: each
// starts where the source is (its memory copy-on-write, its disk chained
// onto the source's) with its own ID, access token, hostname, network and
// reseeded kernel RNG, and counts against the team's quotas. An error
// means no fork was attempted (ErrNotFound for a killed sandbox,
// ErrConflict for a paused one, ErrQuota); otherwise each result says how
// its fork went.
func (s *SandboxService) Fork(ctx context.Context, id string, opts ForkOptions) (Forks, error) {
	body := wire.ForkRequest{Count: ptrOrNil(opts.Count)}
	if opts.Timeout > 0 {
		body.TimeoutSec = ptrOrNil(seconds(opts.Timeout))
	}
	var out wire.ForkResponse
	resp, err := s.c.wire.ForkSandbox(ctx, id, body)
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return Forks{}, err
	}
	f := Forks{SourceHold: time.Duration(float64(out.SourceHoldMs) * float64(time.Millisecond)), Results: make([]ForkResult, len(out.Forks))}
	for i, r := range out.Forks {
		switch {
		case r.Sandbox != nil:
			sb := sandboxFrom(*r.Sandbox)
			f.Results[i].Sandbox = &sb
		case r.Error != nil:
			f.Results[i].Err = &APIError{Status: r.Error.Code, Message: r.Error.Message}
		}
	}
	return f, nil
}

// LogEntry is one entry of a sandbox's log.
type LogEntry struct {
	Time time.Time `json:"time"`
	// Level is "debug", "info", "warn" or "error".
	Level string `json:"level"`
	// Source is "lifecycle" (the platform's events), "envd" (the guest
	// agent's log) or "console" (the guest's serial console).
	Source  string            `json:"source"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// LogOptions filters a sandbox's log.
type LogOptions struct {
	// Since: entries at or after it (zero: from the start).
	Since time.Time
	// Backward reads newest first.
	Backward bool
	// Level: entries of this level or a more severe one ("" all).
	Level string
	// Search: entries whose message contains it, ignoring case.
	Search string
	// PageSize is the entries per request (0: the server's default).
	PageSize int
}

// Logs returns the log of sandbox id (its lifecycle events, envd's log and
// its console; readable after it is killed), page by page as the loop
// goes.
func (s *SandboxService) Logs(ctx context.Context, id string, opts LogOptions) iter.Seq2[LogEntry, error] {
	return func(yield func(LogEntry, error) bool) {
		params := wire.GetSandboxLogsParams{Limit: ptrOrNil(opts.PageSize), Search: ptrOrNil(opts.Search)}
		if !opts.Since.IsZero() {
			params.Since = &opts.Since
		}
		if opts.Backward {
			d := wire.Backward
			params.Direction = &d
		}
		if opts.Level != "" {
			l := wire.GetSandboxLogsParamsLevel(opts.Level)
			params.Level = &l
		}
		for {
			var out wire.SandboxLogs
			resp, err := s.c.wire.GetSandboxLogs(ctx, id, &params)
			if err := decode(resp, err, http.StatusOK, &out); err != nil {
				yield(LogEntry{}, err)
				return
			}
			for _, e := range out.Logs {
				if !yield(LogEntry{Time: e.Time, Level: string(e.Level), Source: string(e.Source), Message: e.Message, Fields: e.Fields}, nil) {
					return
				}
			}
			if out.NextCursor == "" || len(out.Logs) == 0 {
				return
			}
			c := out.NextCursor
			params.Cursor = &c
		}
	}
}
