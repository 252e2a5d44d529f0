package builds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// errLost: the build is no longer this job's (the sweeper gave it to
// another job, or ended it).
var errLost = errors.New("builds: the build was taken from this worker")

type logLine struct {
	step   int32
	stream string
	line   string
	at     time.Time
}

// buildLog collects an attempt's log lines and writes them in batches
// (flush), numbered without gaps per build.
type buildLog struct {
	s       *Service
	id      pgtype.UUID
	job     int64
	mu      sync.Mutex
	pending []logLine
	partial map[string][]byte // step/stream → an unfinished line
}

func newBuildLog(s *Service, id pgtype.UUID, job int64) *buildLog {
	return &buildLog{s: s, id: id, job: job, partial: map[string][]byte{}}
}

// system logs a line of the build itself for a step (0: the build).
func (l *buildLog) system(step int, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		l.pending = append(l.pending, logLine{int32(step), "system", clip(line), time.Now()})
	}
}

// output logs a step's output, line by line.
func (l *buildLog) output(step int, stream string, b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := fmt.Sprintf("%d/%s", step, stream)
	buf := append(l.partial[key], b...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		l.pending = append(l.pending, logLine{int32(step), stream, clip(string(bytes.TrimSuffix(buf[:i], []byte("\r")))), time.Now()})
		buf = buf[i+1:]
	}
	if len(buf) > maxLogLine {
		l.pending = append(l.pending, logLine{int32(step), stream, clip(string(buf)), time.Now()})
		buf = nil
	}
	l.partial[key] = append([]byte(nil), buf...)
}

// endStep logs what is left of a step's unfinished lines.
func (l *buildLog) endStep(step int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, stream := range []string{"stdout", "stderr"} {
		key := fmt.Sprintf("%d/%s", step, stream)
		if b := l.partial[key]; len(b) > 0 {
			l.pending = append(l.pending, logLine{int32(step), stream, clip(string(b)), time.Now()})
		}
		delete(l.partial, key)
	}
}

// flush writes the pending lines.
func (l *buildLog) flush(ctx context.Context) error {
	l.mu.Lock()
	lines := l.pending
	l.pending = nil
	l.mu.Unlock()
	if len(lines) == 0 {
		return nil
	}
	err := l.s.inTx(ctx, func(_ pgx.Tx, q *db.Queries) error {
		last, err := q.AppendBuildLogCount(ctx, db.AppendBuildLogCountParams{ID: l.id, JobID: pgtype.Int8{Int64: l.job, Valid: true}, N: int64(len(lines))})
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, pgx.ErrNoRows) {
			return errLost
		}
		if err != nil {
			return fmt.Errorf("builds: log: %w", err)
		}
		p := db.InsertBuildLogsParams{BuildID: l.id}
		for i, ln := range lines {
			p.Seqs = append(p.Seqs, last-int64(len(lines))+int64(i)+1)
			p.Steps = append(p.Steps, ln.step)
			p.Streams = append(p.Streams, ln.stream)
			p.Lines = append(p.Lines, ln.line)
			p.Created = append(p.Created, ln.at)
		}
		if err := q.InsertBuildLogs(ctx, p); err != nil {
			return fmt.Errorf("builds: log: %w", err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errLost) {
		// Keep them for the next flush.
		l.mu.Lock()
		l.pending = append(lines, l.pending...)
		l.mu.Unlock()
	}
	return err
}

// clip keeps a line valid UTF-8 (PostgreSQL text) and at most maxLogLine
// bytes.
func clip(s string) string {
	if len(s) > maxLogLine {
		s = s[:maxLogLine]
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}
