package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Moves of paused sandboxes off draining hosts (issue 11.6).
//
// A paused sandbox resumes on its host, unless that host is draining: a
// draining host takes nothing new, and its sandboxes are to leave it. The
// resume (explicit, or the proxy's auto-resume: both go through
// ResumeWith) then moves the sandbox, with its files, to a host the
// scheduler chooses, and resumes it there:
//
//  1. In one transaction: the record goes paused → resuming (the resume's
//     quotas checked under the team's row lock), the target host is
//     locked and admits the sandbox (so its reservation counts there from
//     now on: the record names the target), and the move is recorded in
//     sandbox_moves — before anything is made on either host.
//  2. The old host saves the paused sandbox as a hidden snapshot template
//     (moveTemplateName: its memory snapshot, linked, and a copy of its
//     disk; agent CreateSnapshot of a paused sandbox). A sandbox paused
//     without its memory (a filesystem-only pause: the agent's
//     Sandbox.disk_only) is saved as its disk alone (CreateSnapshot with
//     disk_only: an image template whose disk is a copy of the sandbox's
//     top layer, over the layers it reads through).
//  3. The control plane relays that template from the old host to the
//     target over the agent contract (ExportTemplate → ImportTemplate, as
//     template replication does, replicate.go): the disk's whole backing
//     chain goes along, every file verified by its SHA-256 before the
//     target publishes it.
//  4. The target adopts the sandbox: CreateSandbox of the same sandbox ID
//     from that template, with the record's shape, environment, access
//     token, metadata and network rules, restores its machine — the
//     processes and memory as they were paused, the files — and runs it.
//     A sandbox moved as its disk alone boots cold there, with its files,
//     as its resume would have on the old host.
//  5. The record is running on the target (one transaction with the move
//     row's deletion and the audit record).
//  6. Only then is the sandbox destroyed on the old host and the move's
//     template deleted on both hosts (best effort: a left-over hidden
//     template is deleted by the next reconciliation of the move, see
//     below; a template that still backs the sandbox's disk on the target
//     keeps its files until nothing reads through them).
//
// Every step before 5 has its rollback: what the target made is destroyed
// (its sandbox, its imported template), the old host's template is
// deleted, and the record goes back to paused on the old host, which
// keeps the sandbox paused and intact (the snapshot only links and copies
// its files). The resume then fails with the move's error (a 503 when no
// other host can take the sandbox).
//
// A control plane that dies during a move leaves the sandbox_moves row:
// the next leader's reconciliation (Reconcile, first of all) finishes or
// rolls back every move it finds — finished when the target runs the
// sandbox (steps 5 and 6 are done again), rolled back otherwise. A move
// whose hosts cannot be reached stays recorded until a later
// reconciliation settles it; the reconciliation of a host leaves the
// records and machines of sandboxes being moved to the move.
//
// A cold resume of a sandbox paused with its memory drops that memory on
// the old host, which must first restore the machine to sync its disk
// (see the agent's ResumeCold): it resumes there, draining or not. A cold
// resume of one paused without its memory moves it as any resume does.

// moveTemplateName is the name of the hidden snapshot template that
// carries sandbox id's files during its move ("mv" and its hex ID: not
// a template record's name, "tpl-…", so reconciliation never takes it for
// an orphan snapshot).
func moveTemplateName(id pgtype.UUID) string { return "mv" + ID(id) }

// moveHook, when set (by tests only: nothing in production code or
// configuration sets it), runs before each step of a move and fails it
// with its error: the fault-injection point of the move's rollbacks.
var moveHook func(step string) error

func moveStep(step string) error {
	if h := moveHook; h != nil {
		return h(step)
	}
	return nil
}

// drainingHost reports whether host is draining.
func (s *Sandboxes) drainingHost(ctx context.Context, host pgtype.UUID) bool {
	if !host.Valid {
		return false
	}
	h, err := s.st.Queries().GetHost(ctx, host)
	return err == nil && h.Status == store.HostDraining
}

// movable reports whether a resume of row (with o) moves it: it is paused
// on a draining host, and its memory is to be kept or it has none.
func (s *Sandboxes) movable(ctx context.Context, row db.Sandbox, o ResumeOptions) bool {
	if row.State != store.SandboxPaused || !s.drainingHost(ctx, row.HostID) {
		return false
	}
	if !o.Cold {
		return true
	}
	c, err := s.agentFor(ctx, row.HostID)
	if err != nil {
		return false
	}
	diskOnly, err := pausedDiskOnly(ctx, c, row.ID)
	return err == nil && diskOnly
}

// pausedDiskOnly reports whether sandbox id, paused on the host of agent
// c, was paused without its memory (the host says so).
func pausedDiskOnly(ctx context.Context, c *agentclient.Client, id pgtype.UUID) (bool, error) {
	resp, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: ID(id)}))
	if err != nil {
		return false, agentError(err, "read the paused sandbox")
	}
	return resp.Msg.GetSandbox().GetDiskOnly(), nil
}

// beginMove is step 1 of a move of paused sandbox id of p's team: it
// returns the record (resuming, on the target) and the move.
func (s *Sandboxes) beginMove(ctx context.Context, p Principal, id SandboxID) (db.Sandbox, db.SandboxMove, error) {
	cur, err := s.get(ctx, p, id)
	if err != nil {
		return db.Sandbox{}, db.SandboxMove{}, err
	}
	team, err := s.st.Queries().GetTeam(ctx, pgUUID(p.TeamID))
	if err != nil {
		return db.Sandbox{}, db.SandboxMove{}, notFound(err, "team")
	}
	from := cur.HostID
	s.probeStatic(ctx, false)
	sr := scheduler.Request{Team: team.ID.Bytes, BYOC: team.IsBYOC,
		Resources: scheduler.Resources{VCPUs: int64(cur.VCPUs), MemoryMB: int64(cur.MemoryMB)}}
	now := time.Now()
	choice, hosts, err := Decide(ctx, s.st.Queries(), s.sched, sr, now, func(r db.ListSchedulingCandidatesRow) bool { return r.ID != from })
	if err != nil {
		return db.Sandbox{}, db.SandboxMove{}, noHost(err)
	}
	pl := &placement{req: sr, hosts: hosts, now: now}
	mv := db.SandboxMove{SandboxID: cur.ID, FromHost: from, Template: moveTemplateName(cur.ID)}
	var row db.Sandbox
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		t, err := q.LockTeam(ctx, pgUUID(p.TeamID))
		if err != nil {
			return notFound(err, "team")
		}
		if row, err = s.setState(ctx, q, cur.ID, StatePaused, StateResuming, ""); err != nil {
			var se *store.StateError
			if errors.As(err, &se) {
				return &Error{Kind: ErrConflict, Msg: fmt.Sprintf("the sandbox is %s, not paused", se.State), Err: err}
			}
			return notFound(err, "sandbox")
		}
		if row.HostID != from {
			return errorf(ErrConflict, "the sandbox moved meanwhile")
		}
		if err := s.checkResumeQuotas(ctx, q, t); err != nil {
			return err
		}
		if mv.ToHost, err = s.lock(ctx, q, pl, choice); err != nil {
			return err
		}
		if row, err = q.SetSandboxMovedHost(ctx, db.SetSandboxMovedHostParams{ID: cur.ID, HostID: mv.ToHost}); err != nil {
			return fmt.Errorf("the sandbox's new host: %w", err)
		}
		return q.InsertSandboxMove(ctx, db.InsertSandboxMoveParams{SandboxID: mv.SandboxID, FromHost: mv.FromHost,
			ToHost: mv.ToHost, Template: mv.Template})
	})
	return row, mv, err
}

// moveAndResume moves paused sandbox id of p's team off its draining host
// and resumes it on another (see the comment at the top of this file).
func (s *Sandboxes) moveAndResume(ctx context.Context, p Principal, id SandboxID) (Sandbox, error) {
	row, mv, err := s.beginMove(ctx, p, id)
	if err != nil {
		return Sandbox{}, err
	}
	from := mv.FromHost
	// The move and its bookkeeping outlive a client that leaves.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replicateTimeout)
	defer cancel()
	log := s.log.With("sandbox", id.String(), "team", p.TeamID.String(), "host", s.hostKey(mv.ToHost), "from", s.hostKey(from))
	start := time.Now()
	a, err := s.runMove(ctx, row, mv)
	if err != nil {
		log.WarnContext(ctx, "moving a paused sandbox off its draining host failed; it stays paused there", "err", err)
		if rerr := s.rollBackMove(ctx, mv, truncate("move failed: "+err.Error(), 1024)); rerr != nil {
			log.ErrorContext(ctx, "roll back the move (the next reconciliation retries)", "err", rerr)
		}
		var e *Error
		if !errors.As(err, &e) {
			err = &Error{Kind: ErrUnavailable, Msg: "the sandbox's host is draining and the sandbox could not be moved to another host; it stays paused", Err: err}
		}
		s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(), Action: "sandbox.resume",
			Status: AuditError, Metadata: map[string]any{"error": PublicText(err), "moved_from": hostWireID(from)}})
		return Sandbox{}, err
	}
	row, err = s.finishMove(ctx, mv, a, func(q *db.Queries) error {
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(), Action: "sandbox.resume",
			Metadata: map[string]any{"moved_from": hostWireID(from), "moved_to": hostWireID(mv.ToHost)}})
	})
	if err != nil {
		return Sandbox{}, fmt.Errorf("persist the moved sandbox: %w", err)
	}
	log.InfoContext(ctx, "paused sandbox moved off its draining host and resumed", "took", time.Since(start).Round(time.Millisecond))
	return s.view(row, a), nil
}

// runMove does steps 2 to 4 of a move: it returns the sandbox as the
// target runs it.
func (s *Sandboxes) runMove(ctx context.Context, row db.Sandbox, mv db.SandboxMove) (*pb.Sandbox, error) {
	src, err := s.agentFor(ctx, mv.FromHost)
	if err != nil {
		return nil, err
	}
	dst, err := s.agentFor(ctx, mv.ToHost)
	if err != nil {
		return nil, err
	}
	diskOnly, err := pausedDiskOnly(ctx, src, row.ID)
	if err != nil {
		return nil, err
	}
	if err := moveStep("snapshot"); err != nil {
		return nil, err
	}
	if _, err := src.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: ID(row.ID), Name: mv.Template, DiskOnly: diskOnly})); err != nil {
		return nil, agentError(err, "save the paused sandbox for its move")
	}
	if err := moveStep("copy"); err != nil {
		return nil, err
	}
	if _, err := s.relayTemplate(ctx, mv.FromHost, mv.ToHost, mv.Template); err != nil {
		return nil, fmt.Errorf("copy the sandbox's files: %w", err)
	}
	if err := moveStep("adopt"); err != nil {
		return nil, err
	}
	env, err := s.openEnvVars(row)
	if err != nil {
		return nil, err
	}
	var meta map[string]string
	if len(row.Metadata) > 0 {
		if err := json.Unmarshal(row.Metadata, &meta); err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
	}
	req := &pb.CreateSandboxRequest{
		SandboxId: ID(row.ID), Template: mv.Template, Vcpus: uint32(row.VCPUs), MemoryMb: uint32(row.MemoryMB),
		EnvVars: env, AccessToken: auth.EnvdAccessToken(s.secret, ID(row.ID)), Egress: row.AllowInternetAccess,
		Metadata: meta, Network: rulesToProto(NetworkOf(row)),
	}
	if tpl, err := s.resolveTemplate(ctx, row.TeamID, row.Template); err == nil {
		req.DefaultUser, req.DefaultWorkdir = tpl.defaultUser, tpl.workdir
	}
	resp, err := dst.CreateSandbox(ctx, connect.NewRequest(req))
	var a *pb.Sandbox
	if err == nil {
		a = resp.Msg.GetSandbox()
	} else if a, err = s.askAgent(ctx, dst, row.ID, err, store.SandboxRunning); err != nil {
		return nil, agentError(err, "resume the moved sandbox")
	}
	if err := moveStep("commit"); err != nil {
		return nil, err
	}
	return a, nil
}

// finishMove does steps 5 and 6 of mv, whose target runs the sandbox as a
// says; also (when not nil) runs in the transaction of step 5.
func (s *Sandboxes) finishMove(ctx context.Context, mv db.SandboxMove, a *pb.Sandbox, also func(q *db.Queries) error) (db.Sandbox, error) {
	row, err := s.persistRunning(ctx, mv.SandboxID, store.SandboxResuming, a, func(q *db.Queries) error {
		if err := q.DeleteSandboxMove(ctx, mv.SandboxID); err != nil {
			return err
		}
		if also != nil {
			return also(q)
		}
		return nil
	})
	var se *store.StateError
	if errors.As(err, &se) {
		// The record left resuming meanwhile (destroyed during the move):
		// nothing of the move is wanted on either host.
		_ = s.cleanUpMove(ctx, mv, true) // logged
		_ = s.cleanUpMove(ctx, mv, false)
		if derr := s.st.Queries().DeleteSandboxMove(ctx, mv.SandboxID); derr != nil {
			return row, errors.Join(err, derr)
		}
		return row, &Error{Kind: ErrConflict, Msg: fmt.Sprintf("the sandbox became %s during its move", se.State), Err: err}
	}
	if err != nil {
		return row, err
	}
	_ = s.cleanUpMove(ctx, mv, true) // logged; a left-over is the next reconciliation's
	return row, nil
}

// cleanUpMove removes what a finished (done) or rolled-back move left on
// the hosts: its template on both, and the sandbox on the host it left
// (done) or on the target (not done).
func (s *Sandboxes) cleanUpMove(ctx context.Context, mv db.SandboxMove, done bool) error {
	var errs []error
	gone := mv.ToHost
	if done {
		gone = mv.FromHost
	}
	if c, err := s.agentFor(ctx, gone); err != nil {
		errs = append(errs, err)
	} else if dr, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: ID(mv.SandboxID)})); err != nil &&
		!errors.Is(err, agentclient.ErrNotFound) {
		errs = append(errs, fmt.Errorf("destroy the sandbox on %s: %w", s.hostKey(gone), err))
	} else if done && dr != nil {
		// The history the old host sampled stays (its pause stored every
		// tier; this is the 24 h tier up to its end there).
		s.storeMetrics(ctx, mv.SandboxID, []*pb.MetricSeries{dr.Msg.GetMetrics()}, MetricTier24h)
	}
	for _, h := range []pgtype.UUID{mv.ToHost, mv.FromHost} {
		c, err := s.agentFor(ctx, h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: mv.Template})); err != nil &&
			!errors.Is(err, agentclient.ErrNotFound) {
			errs = append(errs, fmt.Errorf("delete the move's template on %s: %w", s.hostKey(h), err))
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		s.log.WarnContext(ctx, "clean up after a move", "sandbox", ID(mv.SandboxID), "done", done, "err", err)
	}
	return err
}

// rollBackMove undoes mv: what the target made goes, and the record is
// paused on the old host again (with reason). The move row goes only when
// the target's copy is gone (else a later reconciliation tries again).
func (s *Sandboxes) rollBackMove(ctx context.Context, mv db.SandboxMove, reason string) error {
	cerr := s.cleanUpMove(ctx, mv, false)
	return s.st.Tx(ctx, func(q *db.Queries) error {
		row, err := q.SetSandboxMovedHost(ctx, db.SetSandboxMovedHostParams{ID: mv.SandboxID, HostID: mv.FromHost})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err == nil {
			if _, err := s.setState(ctx, q, row.ID, StateResuming, StatePaused, reason); err != nil {
				return err
			}
		}
		if cerr != nil {
			return cerr
		}
		return q.DeleteSandboxMove(ctx, mv.SandboxID)
	})
}

// RecoverMoves settles the moves a control plane left half done (it died
// during them): a move whose target runs the sandbox is finished, any
// other rolled back. A move whose hosts do not answer stays for a later
// pass. It returns how many moves it settled.
func (s *Sandboxes) RecoverMoves(ctx context.Context) (int, error) {
	moves, err := s.st.Queries().ListSandboxMoves(ctx)
	if err != nil {
		return 0, fmt.Errorf("recover moves: %w", err)
	}
	n := 0
	var errs []error
	for _, mv := range moves {
		log := s.log.With("sandbox", ID(mv.SandboxID), "host", s.hostKey(mv.ToHost), "from", s.hostKey(mv.FromHost))
		dst, err := s.agentFor(ctx, mv.ToHost)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := dst.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: ID(mv.SandboxID)}))
		switch {
		case err == nil && resp.Msg.GetSandbox().GetState() == pb.SandboxState_SANDBOX_STATE_RUNNING:
			if _, err := s.finishMove(ctx, mv, resp.Msg.GetSandbox(), nil); err != nil {
				errs = append(errs, err)
				continue
			}
			log.InfoContext(ctx, "an interrupted move finished: the sandbox runs on its new host")
		case err == nil, errors.Is(err, agentclient.ErrNotFound):
			if err := s.rollBackMove(ctx, mv, "the move to another host was interrupted"); err != nil {
				errs = append(errs, err)
				continue
			}
			log.InfoContext(ctx, "an interrupted move rolled back: the sandbox is paused on its old host")
		default:
			errs = append(errs, fmt.Errorf("recover the move of %s: %w", ID(mv.SandboxID), err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Evacuation is what Evacuate did with a draining host's paused
// sandboxes.
type Evacuation struct {
	// Moved are the sandboxes now paused on another host.
	Moved []SandboxID
	// Failed are those that could not be moved (they stay paused where
	// they were, or — when only the pause on the new host failed — run
	// there), with why.
	Failed map[SandboxID]error
}

// Evacuate moves every paused sandbox of draining host to other hosts,
// each as a resume moves it (moveAndResume) and then paused again on its
// new host as it was paused before (with its memory or without), for p
// (who must be allowed to manage the host: the caller checks, e.g.
// Hosts.Update draining it). One that no other host can take stays where
// it is (Failed). ErrConflict when the host is not draining.
func (s *Sandboxes) Evacuate(ctx context.Context, p Principal, hostID wireid.HostID) (Evacuation, error) {
	host := pgUUID(hostID)
	if !s.drainingHost(ctx, host) {
		return Evacuation{}, errorf(ErrConflict, "the host is not draining")
	}
	rows, err := s.st.Queries().ListSandboxesByHost(ctx, db.ListSandboxesByHostParams{HostID: host, States: []string{store.SandboxPaused}})
	if err != nil {
		return Evacuation{}, fmt.Errorf("evacuate: %w", err)
	}
	out := Evacuation{Moved: []SandboxID{}, Failed: map[SandboxID]error{}}
	src, srcErr := s.agentFor(ctx, host)
	for _, row := range rows {
		id := sandboxIDOf(row.ID)
		// Each move acts for the sandbox's team, recorded as p's doing.
		tp := Principal{TeamID: teamIDOf(row.TeamID), UserID: p.UserID, APIKeyID: p.APIKeyID, ActorName: p.ActorName}
		if srcErr != nil {
			out.Failed[id] = srcErr
			continue
		}
		diskOnly, err := pausedDiskOnly(ctx, src, row.ID)
		if err != nil {
			out.Failed[id] = err
			continue
		}
		if _, err := s.moveAndResume(ctx, tp, id); err != nil {
			out.Failed[id] = err
			continue
		}
		if _, err := s.PauseWith(ctx, tp, id, PauseOptions{FilesystemOnly: diskOnly}); err != nil {
			out.Failed[id] = fmt.Errorf("moved, but not paused again on its new host: %w", err)
			continue
		}
		out.Moved = append(out.Moved, id)
	}
	s.log.InfoContext(ctx, "paused sandboxes evacuated from a draining host", "host", s.hostKey(host), "moved", len(out.Moved), "failed", len(out.Failed))
	return out, nil
}
