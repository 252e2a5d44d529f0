package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Connect is E2B's connect: a running sandbox of p's team gets at least
// timeoutSec more (its deadline and idle window only ever grow); a paused
// one is resumed first (resumed is then true). A stopped, failed or lost
// sandbox is not found; one in transition is a conflict.
func (s *Sandboxes) Connect(ctx context.Context, p Principal, id SandboxID, timeoutSec int32) (sb Sandbox, resumed bool, err error) {
	return s.ConnectWith(ctx, p, id, timeoutSec, ResumeOptions{})
}

// ConnectWith is Connect with a paused sandbox resumed as o says
// (pausemodes.go); a running one is left as it is.
func (s *Sandboxes) ConnectWith(ctx context.Context, p Principal, id SandboxID, timeoutSec int32, o ResumeOptions) (sb Sandbox, resumed bool, err error) {
	if timeoutSec < 0 || timeoutSec > maxTimeoutSec {
		return Sandbox{}, false, errorf(ErrInvalid, "timeout: 0 to %d seconds", maxTimeoutSec)
	}
	row, err := s.settled(ctx, p, id)
	if err != nil {
		return Sandbox{}, false, err
	}
	switch row.State {
	case store.SandboxRunning:
	case store.SandboxPaused:
		if _, err := s.ResumeWith(ctx, p, id, o); err != nil {
			return Sandbox{}, false, err
		}
		resumed = true
	case store.SandboxStopped, store.SandboxError, store.SandboxMissing:
		return Sandbox{}, false, errorf(ErrNotFound, "sandbox not found")
	default:
		return Sandbox{}, false, errorf(ErrConflict, "the sandbox is %s", row.State)
	}
	if timeoutSec > 0 {
		row, err = s.st.Queries().ExtendSandboxTimeout(ctx, db.ExtendSandboxTimeoutParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID), TimeoutSec: timeoutSec})
		if errors.Is(err, store.ErrNotFound) {
			return Sandbox{}, false, errorf(ErrConflict, "the sandbox is no longer running")
		}
		if err != nil {
			return Sandbox{}, false, fmt.Errorf("extend timeout: %w", err)
		}
	} else if row, err = s.get(ctx, p, id); err != nil {
		return Sandbox{}, false, err
	}
	return s.view(row, nil), resumed, nil
}

// settled returns a sandbox of p's team once it is not in transition
// (starting, pausing, resuming), waiting up to a minute for that: a client
// that saw it paused may connect while the pause is still being recorded.
func (s *Sandboxes) settled(ctx context.Context, p Principal, id SandboxID) (db.Sandbox, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		row, err := s.get(ctx, p, id)
		if err != nil {
			return db.Sandbox{}, err
		}
		switch row.State {
		case store.SandboxStarting, store.SandboxPausing, store.SandboxResuming:
		default:
			return row, nil
		}
		if time.Now().After(deadline) {
			return row, nil
		}
		select {
		case <-ctx.Done():
			return db.Sandbox{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TrafficRoute is what the traffic proxy needs to know of a sandbox to
// authorize and forward its traffic.
type TrafficRoute struct {
	// SandboxID is the wire ID.
	SandboxID string
	// Host names the agent that runs it (in the agent pool).
	Host string
	// EnvdAccessToken guards envd's port; TrafficToken the others unless
	// Public.
	EnvdAccessToken, TrafficToken string
	Public                        bool
	// Team owns the sandbox (wire ID).
	Team string
	// Asleep: the sandbox is paused (or resuming) and was created with
	// auto-resume. Nothing forwards to it before WakeTraffic; the proxy
	// authorizes the request against this route first, so that only
	// traffic that may reach the sandbox resumes it.
	Asleep bool
}

// ErrNotRunning: the sandbox exists but is not running (and cannot be
// resumed by traffic); the proxy answers it as not found.
var ErrNotRunning = errors.New("sandbox not running")

// ResolveTraffic returns the route of a sandbox by its wire ID, read from
// its record; it changes nothing. A running sandbox's route is ready; a
// paused (or resuming) one created with auto-resume is Asleep (WakeTraffic
// resumes it). Unknown IDs are ErrNotFound; sandboxes that are neither are
// ErrNotRunning.
func (s *Sandboxes) ResolveTraffic(ctx context.Context, sandboxID string) (TrafficRoute, error) {
	id, err := wireid.Parse(wireid.Sandbox, sandboxID)
	if err != nil {
		return TrafficRoute{}, errorf(ErrNotFound, "sandbox not found")
	}
	row, err := s.st.Queries().GetSandboxByID(ctx, id)
	if err != nil {
		return TrafficRoute{}, notFound(err, "sandbox")
	}
	asleep := row.State != store.SandboxRunning && row.AutoResume && (row.State == store.SandboxPaused || row.State == store.SandboxResuming)
	if row.State != store.SandboxRunning && !asleep {
		return TrafficRoute{}, fmt.Errorf("%w: %s", ErrNotRunning, row.State)
	}
	return s.trafficRoute(sandboxID, row, asleep)
}

// WakeTraffic resumes a sandbox that ResolveTraffic found Asleep (once,
// however many requests arrive together), as the system, and returns its
// running route. The caller has authorized the traffic against the asleep
// route: an unauthenticated request must never get here.
func (s *Sandboxes) WakeTraffic(ctx context.Context, sandboxID string) (TrafficRoute, error) {
	id, err := wireid.Parse(wireid.Sandbox, sandboxID)
	if err != nil {
		return TrafficRoute{}, errorf(ErrNotFound, "sandbox not found")
	}
	row, err := s.st.Queries().GetSandboxByID(ctx, id)
	if err != nil {
		return TrafficRoute{}, notFound(err, "sandbox")
	}
	if row.State != store.SandboxRunning && row.AutoResume && (row.State == store.SandboxPaused || row.State == store.SandboxResuming) {
		if row, err = s.autoResume(ctx, row); err != nil {
			return TrafficRoute{}, err
		}
	}
	if row.State != store.SandboxRunning {
		return TrafficRoute{}, fmt.Errorf("%w: %s", ErrNotRunning, row.State)
	}
	return s.trafficRoute(sandboxID, row, false)
}

func (s *Sandboxes) trafficRoute(sandboxID string, row db.Sandbox, asleep bool) (TrafficRoute, error) {
	rt := TrafficRoute{
		SandboxID: sandboxID, Host: s.hostKey(row.HostID), Public: row.AllowPublicTraffic, Asleep: asleep,
		EnvdAccessToken: auth.EnvdAccessToken(s.secret, sandboxID), Team: wireid.Format(wireid.Team, row.TeamID),
	}
	if !row.AllowPublicTraffic {
		var err error
		if rt.TrafficToken, err = auth.TrafficAccessToken(s.secret, sandboxID); err != nil {
			return TrafficRoute{}, err
		}
	}
	return rt, nil
}

// autoResume resumes a paused sandbox for traffic: one resume per sandbox
// at a time (the others wait for its outcome); a resume already under way
// elsewhere is waited for.
func (s *Sandboxes) autoResume(ctx context.Context, row db.Sandbox) (db.Sandbox, error) {
	key := ID(row.ID)
	v, err, _ := s.resumes.Do(key, func() (any, error) {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		p := Principal{TeamID: teamIDOf(row.TeamID)}
		if row.State == store.SandboxPaused {
			if _, err := s.Resume(bg, p, sandboxIDOf(row.ID)); err != nil && !errors.Is(err, ErrConflict) {
				return nil, err
			}
		}
		// Resumed here, or resuming elsewhere (a conflict): its settled
		// record.
		return s.settled(bg, p, sandboxIDOf(row.ID))
	})
	if err != nil {
		return db.Sandbox{}, err
	}
	return v.(db.Sandbox), nil
}

// TouchTraffic records proxied traffic as activity of a running sandbox.
func (s *Sandboxes) TouchTraffic(ctx context.Context, sandboxID string) {
	id, err := wireid.Parse(wireid.Sandbox, sandboxID)
	if err != nil {
		return
	}
	if err := s.touch(ctx, id); err != nil {
		s.log.WarnContext(ctx, "record traffic activity", "sandbox", sandboxID, "err", err)
	}
}

// RunningSandboxIDs returns the wire IDs of the running sandboxes (of every host):
// the candidates of a signed file URL that names no sandbox (the proxy
// keeps them, with their envd tokens, in an index it refreshes at a
// bounded rate, never per request).
func (s *Sandboxes) RunningSandboxIDs(ctx context.Context) ([]string, error) {
	rows, err := s.st.Queries().ListRunningSandboxIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("running sandboxes: %w", err)
	}
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = ID(r)
	}
	return ids, nil
}

// EnvdAccessToken returns the envd access token of a sandbox by its wire
// ID (an HMAC of the ID under the server secret).
func (s *Sandboxes) EnvdAccessToken(sandboxID string) string {
	return auth.EnvdAccessToken(s.secret, sandboxID)
}
