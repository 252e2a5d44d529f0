package builds

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// chunkWriter writes a stored archive's bytes as build_archive_chunks rows
// of chunkSize bytes, as they come.
type chunkWriter struct {
	ctx   context.Context
	q     *db.Queries
	id    pgtype.UUID
	h     hash.Hash
	buf   []byte
	seq   int32
	total int64
}

func newChunkWriter(ctx context.Context, q *db.Queries, id pgtype.UUID) *chunkWriter {
	return &chunkWriter{ctx: ctx, q: q, id: id, h: sha256.New(), buf: make([]byte, 0, chunkSize)}
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(chunkSize-len(w.buf), len(p))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == chunkSize {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if err := w.q.InsertBuildArchiveChunk(w.ctx, db.InsertBuildArchiveChunkParams{ArchiveID: w.id, Seq: w.seq, Data: w.buf}); err != nil {
		return fmt.Errorf("builds: write archive chunk: %w", err)
	}
	w.h.Write(w.buf)
	w.total += int64(len(w.buf))
	w.seq++
	w.buf = w.buf[:0]
	return nil
}

// archiveReader reads a stored archive chunk by chunk.
type archiveReader struct {
	ctx context.Context
	q   *db.Queries
	id  pgtype.UUID
	seq int32
	cur []byte
	eof bool
}

func (r *archiveReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		data, err := r.q.GetBuildArchiveChunk(r.ctx, db.GetBuildArchiveChunkParams{ArchiveID: r.id, Seq: r.seq})
		if errors.Is(err, store.ErrNotFound) {
			r.eof = true
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("builds: read archive chunk: %w", err)
		}
		r.cur = data
		r.seq++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}
