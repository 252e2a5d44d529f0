package service

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// insertSandbox inserts a sandbox row of team in state, with timeoutSec,
// and (for a running one) end_at at now + endIn when endIn is not zero.
func insertSandbox(t *testing.T, e *env, team pgtype.UUID, state string, timeoutSec int32, endIn time.Duration) db.Sandbox {
	t.Helper()
	ctx := context.Background()
	r, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: team, Template: "minimal", State: state, VCPUs: 1, MemoryMB: 256, TimeoutSec: timeoutSec, Metadata: []byte(`{}`),
		AutoPause: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if endIn != 0 {
		if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET end_at = now() + make_interval(secs => $2) WHERE id = $1",
			r.ID, endIn.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.st.Queries().GetSandboxByID(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func sandboxRow(t *testing.T, e *env, id pgtype.UUID) db.Sandbox {
	t.Helper()
	r, err := e.st.Queries().GetSandboxByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// auditActions lists the team's audit events as "action/status/actor"
// (admin view), oldest first.
func auditActions(t *testing.T, e *env, p Principal) []string {
	t.Helper()
	p.Role = RoleOwner
	rows, _, err := NewAudit(e.st, nil).List(context.Background(), p, AuditFilter{Limit: 200})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := len(rows) - 1; i >= 0; i-- {
		out = append(out, rows[i].Action+"/"+rows[i].Status+"/"+rows[i].ActorType)
	}
	return out
}

// TestEnvVarsEncryptedAtRest: the create request's env vars are stored
// sealed (no plaintext in the column), open for their own sandbox only.
func TestEnvVarsEncryptedAtRest(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "env@example.com")
	env := map[string]string{"API_TOKEN": "plain-secret-4711", "OTHER": "value-0815"}
	// The agent is unreachable: the sandbox is persisted (as error) all the same.
	if _, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", EnvVars: env}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Create = %v", err)
	}
	items, _, err := e.sbx.List(ctx, p, ListFilter{})
	if err != nil || len(items) != 1 {
		t.Fatalf("List = %d, %v", len(items), err)
	}
	row := sandboxRow(t, e, pgUUID(items[0].ID))
	var raw []byte
	if err := e.st.Pool().QueryRow(ctx, "SELECT env_vars FROM sandboxes WHERE id = $1", row.ID).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) == 0 {
		t.Fatal("env_vars not stored")
	}
	for _, plain := range []string{"plain-secret-4711", "value-0815", "API_TOKEN"} {
		if bytes.Contains(raw, []byte(plain)) {
			t.Errorf("env_vars column contains %q", plain)
		}
	}
	got, err := e.sbx.openEnvVars(row)
	if err != nil || len(got) != 2 || got["API_TOKEN"] != "plain-secret-4711" {
		t.Fatalf("openEnvVars = %v, %v", got, err)
	}
	// A sandbox without env vars stores none.
	other := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxStopped, 0, 0)
	if got, err := e.sbx.openEnvVars(other); err != nil || got != nil {
		t.Fatalf("no env vars: %v, %v", got, err)
	}
	// The value copied to another row does not open there.
	if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET env_vars = $2 WHERE id = $1", other.ID, raw); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sbx.openEnvVars(sandboxRow(t, e, other.ID)); !errors.Is(err, auth.ErrFieldCiphertext) {
		t.Fatalf("env vars copied to another sandbox: %v", err)
	}
	// Nor under another server secret.
	s2, err := NewSandboxes(ctx, SandboxesConfig{Store: e.st, Agents: e.sbx.agents, Secret: []byte("another-secret-of-at-least-32-bytes-length")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.openEnvVars(row); !errors.Is(err, auth.ErrFieldCiphertext) {
		t.Fatalf("env vars under another secret: %v", err)
	}
}

func TestSnapshotNameValidation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "names@example.com")
	sb := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 0, 0)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"my-snap", true},
		{"v1.2_x-Y", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{"../x", false},
		{"a/b", false},
		{`a\b`, false},
		{".", false},
		{"..", false},
		{"a..b", false},
		{".hidden", false},
		{"-dash", false},
		{strings.Repeat("a", 129), false},
		{"a\x00b", false},
		{"a b", false},
		{"base", false},
		{"minimal", false},
		{"Base", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateSnapshotName(tc.name, image.Templates())
			if tc.ok != (err == nil) {
				t.Fatalf("ValidateSnapshotName(%q) = %v", tc.name, err)
			}
			if tc.ok {
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if msg, ok := PublicMessage(err); !ok || msg == "" {
				t.Fatalf("no public message: %v", err)
			}
			// Refused before anything else: no agent call, nothing stored.
			if _, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: sandboxIDOf(sb.ID), Name: tc.name, Overwrite: true}); !errors.Is(err, ErrInvalid) {
				t.Fatalf("CreateSnapshot = %v, want ErrInvalid", err)
			}
		})
	}
	if list, err := e.sbx.ListSnapshots(ctx, p); err != nil || len(list) != 0 {
		t.Fatalf("snapshots after refusals: %v, %v", list, err)
	}
}

// TestSnapshotTeamScope: which templates a team lists, gets, deletes and
// creates sandboxes from (own first, then public, then built-in images;
// another team's are not found), and the fixed shape of a snapshot. The
// agent is unreachable: all of it is decided before any agent call.
func TestSnapshotTeamScope(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, pa := e.signup(t, "a@example.com")
	b, pb := e.signup(t, "b@example.com")
	mk := func(team pgtype.UUID, name string, vcpus, mem int32) db.Template {
		t.Helper()
		r, err := e.st.Queries().InsertTemplate(ctx, db.InsertTemplateParams{ID: store.NewUUID(), TeamID: team, Name: name,
			Kind: store.TemplateSnapshot, VCPUs: vcpus, MemoryMB: mem, Metadata: []byte(`{}`), HostID: e.sbx.StaticHosts()[0]})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	snapA := mk(pgUUID(a.Team.ID), "snap-a", 2, 512)
	pubSame := mk(store.PlatformTeamID, "snap-a", 1, 256)
	pub := mk(store.PlatformTeamID, "pub", 1, 256)
	onlyB := mk(pgUUID(b.Team.ID), "only-b", 1, 256)

	list := func(p Principal) []string {
		items, err := e.sbx.ListSnapshots(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range items {
			out = append(out, s.ID.String()+map[bool]string{true: "/public", false: ""}[s.Public])
		}
		return out
	}
	if got, want := list(pa), []string{TemplateID(pub.ID) + "/public", TemplateID(snapA.ID), TemplateID(pubSame.ID) + "/public"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("team A lists %v, want %v", got, want)
	}
	if got, want := list(pb), []string{TemplateID(onlyB.ID), TemplateID(pub.ID) + "/public", TemplateID(pubSame.ID) + "/public"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("team B lists %v, want %v", got, want)
	}
	for _, tc := range []struct {
		p    Principal
		name string
		want pgtype.UUID
	}{
		{pa, "snap-a", snapA.ID}, {pb, "snap-a", pubSame.ID}, {pa, "pub", pub.ID}, {pb, "only-b", onlyB.ID},
	} {
		if got, err := e.sbx.GetSnapshot(ctx, tc.p, tc.name); err != nil || pgUUID(got.ID) != tc.want {
			t.Errorf("GetSnapshot(%s) = %v, %v", tc.name, got.ID.String(), err)
		}
	}
	for _, name := range []string{"only-b", "nope", "../x", ""} {
		if _, err := e.sbx.GetSnapshot(ctx, pa, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetSnapshot(%q) by A = %v, want ErrNotFound", name, err)
		}
		if err := e.sbx.DeleteSnapshot(ctx, pa, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteSnapshot(%q) by A = %v, want ErrNotFound", name, err)
		}
	}
	if err := e.sbx.DeleteSnapshot(ctx, pb, "pub"); !errors.Is(err, ErrForbidden) {
		t.Errorf("DeleteSnapshot of a public template = %v, want ErrForbidden", err)
	}
	// The host cannot be asked: the record stays.
	if err := e.sbx.DeleteSnapshot(ctx, pa, "snap-a"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("DeleteSnapshot with the agent down = %v", err)
	}
	if _, err := e.sbx.GetSnapshot(ctx, pa, "snap-a"); err != nil {
		t.Errorf("after a failed delete: %v", err)
	}

	// Creating sandboxes: refusals persist nothing.
	for _, tc := range []struct {
		name string
		req  CreateSandbox
		want error
	}{
		{"another team's template", CreateSandbox{Template: "only-b"}, ErrNotFound},
		{"unknown template", CreateSandbox{Template: "no-such-template"}, ErrNotFound},
		{"other vcpus than the snapshot's", CreateSandbox{Template: "snap-a", VCPUs: 4}, ErrInvalid},
		{"other memory than the snapshot's", CreateSandbox{Template: "snap-a", VCPUs: 2, MemoryMB: 1024}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.sbx.Create(ctx, pa, tc.req); !errors.Is(err, tc.want) {
				t.Fatalf("Create = %v, want %v", err, tc.want)
			}
			if n := countSandboxes(t, e, pgUUID(a.Team.ID)); n != 0 {
				t.Fatalf("%d sandboxes after a refused create", n)
			}
		})
	}
	// Accepted (then the agent is unreachable): the shape is the snapshot's,
	// the name the one the user gave.
	for _, tc := range []struct {
		p        Principal
		req      CreateSandbox
		vcpus    int32
		memoryMB int32
	}{
		{pa, CreateSandbox{Template: "snap-a"}, 2, 512},
		{pa, CreateSandbox{Template: "snap-a", VCPUs: 2, MemoryMB: 512}, 2, 512},
		{pb, CreateSandbox{Template: "snap-a"}, 1, 256},
		{pb, CreateSandbox{Template: "minimal", VCPUs: 2}, 2, DefaultMemoryMB},
	} {
		if _, err := e.sbx.Create(ctx, tc.p, tc.req); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Create(%+v) = %v", tc.req, err)
		}
		items, _, err := e.sbx.List(ctx, tc.p, ListFilter{Limit: 1})
		if err != nil || len(items) != 1 {
			t.Fatal(err)
		}
		if r := items[0]; r.Template != tc.req.Template || r.VCPUs != tc.vcpus || r.MemoryMB != tc.memoryMB {
			t.Errorf("Create(%+v) stored %s %d/%d", tc.req, r.Template, r.VCPUs, r.MemoryMB)
		}
	}
}

// TestReaperAgentUnreachable: the reaper's pass over the real database
// with a fake clock; the agent cannot be reached, so a claimed sandbox
// goes back to running with its deadline, audited as a failed auto-pause
// by the system.
func TestReaperAgentUnreachable(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "reap@example.com")
	expired := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 60, -time.Minute)
	future := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 3600, time.Hour)
	never := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 0, 0)
	pausing := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 60, -time.Hour)
	if _, err := e.st.TransitionSandbox(ctx, nil, pausing.ID, []string{store.SandboxRunning}, store.SandboxPausing, ""); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r := NewReaper(e.sbx, ReaperConfig{Now: func() time.Time { return now }})
	res, err := r.Pass(ctx)
	if err != nil || res != (ReapResult{Skipped: 1}) {
		t.Fatalf("Pass = %+v, %v", res, err)
	}
	got := sandboxRow(t, e, expired.ID)
	if got.State != store.SandboxRunning || !got.EndAt.Time.Equal(expired.EndAt.Time) || !strings.Contains(got.StateReason, "auto-pause failed") {
		t.Fatalf("after a failed auto-pause: %s %v %q", got.State, got.EndAt, got.StateReason)
	}
	if s := sandboxRow(t, e, pausing.ID).State; s != store.SandboxPausing {
		t.Fatalf("a pausing sandbox became %s", s)
	}
	if got, want := auditActions(t, e, p), []string{"sandbox.auto_pause/error/system"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("audit = %v, want %v", got, want)
	}
	// Two hours on, the one-hour deadline has passed too; no timeout, never.
	now = now.Add(2 * time.Hour)
	if res, err := r.Pass(ctx); err != nil || res != (ReapResult{Skipped: 2}) {
		t.Fatalf("Pass = %+v, %v", res, err)
	}
	for _, id := range []pgtype.UUID{expired.ID, future.ID, never.ID} {
		if s := sandboxRow(t, e, id).State; s != store.SandboxRunning {
			t.Fatalf("%s is %s", ID(id), s)
		}
	}

	// The claim is the guard between replicas: of racing claims one wins,
	// and none while the deadline is ahead of the clock.
	if _, err := e.st.Queries().ClaimExpiredSandbox(ctx, db.ClaimExpiredSandboxParams{ID: future.ID, Now: time.Now()}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim before the deadline: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Go(func() {
			_, err := e.st.Queries().ClaimExpiredSandbox(ctx, db.ClaimExpiredSandboxParams{ID: expired.ID, Now: now})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, store.ErrNotFound):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d claims won, want 1", wins)
	}
}

// TestPingTimeoutTouchNoAgent: what ping, set-timeout and touch decide in
// the database (the agent is unreachable).
func TestPingTimeoutTouchNoAgent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "ping@example.com")
	_, other := e.signup(t, "other@example.com")
	running := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxRunning, 60, time.Second)
	paused := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxPaused, 60, 0)
	stopped := insertSandbox(t, e, pgUUID(p.TeamID), store.SandboxStopped, 60, 0)

	if _, err := e.sbx.Ping(ctx, p, sandboxIDOf(paused.ID)); !errors.Is(err, ErrConflict) {
		t.Errorf("Ping of a paused sandbox = %v", err)
	}
	if _, err := e.sbx.Ping(ctx, other, sandboxIDOf(running.ID)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Ping by another team = %v", err)
	}
	if _, err := e.sbx.Ping(ctx, p, sandboxIDOf(running.ID)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ping with the agent down = %v", err)
	}

	for _, tc := range []struct {
		name string
		p    Principal
		id   pgtype.UUID
		sec  int32
		want error
	}{
		{"negative", p, running.ID, -1, ErrInvalid},
		{"too long", p, running.ID, maxTimeoutSec + 1, ErrInvalid},
		{"another team", other, running.ID, 10, ErrNotFound},
		{"stopped", p, stopped.ID, 10, ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.sbx.SetTimeout(ctx, tc.p, sandboxIDOf(tc.id), tc.sec); !errors.Is(err, tc.want) {
				t.Fatalf("SetTimeout = %v, want %v", err, tc.want)
			}
		})
	}
	sb, err := e.sbx.SetTimeout(ctx, p, sandboxIDOf(running.ID), 120)
	if d := time.Until(sb.EndAt); err != nil || sb.TimeoutSec != 120 || d < 100*time.Second || d > 130*time.Second {
		t.Fatalf("SetTimeout(120) = %v (%v), %v", sb.EndAt, d, err)
	}
	if sb, err := e.sbx.SetTimeout(ctx, p, sandboxIDOf(running.ID), 0); err != nil || !sb.EndAt.IsZero() || sb.TimeoutSec != 0 {
		t.Fatalf("SetTimeout(0) = %+v, %v", sb.EndAt, err)
	}
	// A paused sandbox keeps no deadline; its clock starts when it resumes.
	if sb, err := e.sbx.SetTimeout(ctx, p, sandboxIDOf(paused.ID), 30); err != nil || !sb.EndAt.IsZero() || sb.TimeoutSec != 30 {
		t.Fatalf("SetTimeout of a paused sandbox = %+v, %v", sb.EndAt, err)
	}
	if got := auditActions(t, e, p); len(got) != 3 || got[0] != "sandbox.set_timeout/success/user" {
		t.Fatalf("audit = %v", got)
	}

	// touch pushes the deadline of a running sandbox, at most once a second
	// (of the service's clock, driven here).
	clock := time.Now()
	e.sbx.now = func() time.Time { return clock }
	if _, err := e.sbx.SetTimeout(ctx, p, sandboxIDOf(running.ID), 60); err != nil {
		t.Fatal(err)
	}
	setEnd := func(id pgtype.UUID) {
		if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET end_at = now() + interval '1 second' WHERE id = $1", id); err != nil {
			t.Fatal(err)
		}
	}
	setEnd(running.ID)
	if err := e.sbx.touch(ctx, running.ID); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(sandboxRow(t, e, running.ID).EndAt.Time); d < 50*time.Second {
		t.Fatalf("touch left the deadline %v ahead", d)
	}
	setEnd(running.ID)
	if err := e.sbx.touch(ctx, running.ID); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(sandboxRow(t, e, running.ID).EndAt.Time); d > 5*time.Second {
		t.Fatalf("a second touch within a second wrote (deadline %v ahead)", d)
	}
	clock = clock.Add(touchEvery)
	if err := e.sbx.touch(ctx, running.ID); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(sandboxRow(t, e, running.ID).EndAt.Time); d < 50*time.Second {
		t.Fatalf("touch a second later left the deadline %v ahead", d)
	}
	// A sandbox that does not run is left alone.
	if err := e.sbx.touch(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}
	if r := sandboxRow(t, e, paused.ID); r.EndAt.Valid || r.State != store.SandboxPaused {
		t.Fatalf("touch of a paused sandbox: %+v", r)
	}
}
