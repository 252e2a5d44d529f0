package service

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-test-secret")

type env struct {
	st    *store.Store
	acc   *Accounts
	sbx   *Sandboxes
	hosts *Hosts
}

// newEnv opens a fresh migrated database. The agent endpoint is a closed
// port: tests using it check the paths that refuse before any agent call,
// or that an unreachable agent is handled.
func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvAgent(t, unreachable, "unused")
}

// unreachable is the agent URL of newEnv: a closed port.
const unreachable = "http://127.0.0.1:1"

// newEnvAgent is newEnv with the agent at url.
func newEnvAgent(t *testing.T, url, token string) *env {
	t.Helper()
	st, s := testServices(t, map[string]agentclient.Endpoint{LocalHost: {URL: url, Token: token}}, nil)
	return &env{st: st, acc: s.Accounts, sbx: s.Sandboxes, hosts: s.Hosts}
}

// testServices builds the services, as every test of the package does,
// over a fresh migrated database: open sign-up, a cheap password hash,
// the static agents given (host name → endpoint; an agent at unreachable
// or none: the built-in templates an agent would report are given
// instead), and what edit changes of the configuration (nil: nothing).
func testServices(t *testing.T, agents map[string]agentclient.Endpoint, edit func(*ServicesConfig)) (*store.Store, *Services) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	hasher, err := auth.NewPasswordHasher(auth.Argon2Params{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	pool := agentclient.NewPool(agentclient.Options{})
	t.Cleanup(pool.Close)
	reachable := false
	for name, ep := range agents {
		if err := pool.Set(name, ep); err != nil {
			t.Fatal(err)
		}
		reachable = reachable || ep.URL != unreachable
	}
	cfg := ServicesConfig{Store: st, Agents: pool, Secret: testSecret, Hasher: hasher, Signup: SignupOpen}
	if !reachable {
		cfg.BuiltinTemplates = image.Templates()
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := NewServices(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st, s
}

// newEnvHost is newEnvAgent over a real agent (hosttest) on the network
// slot pool p, and a client of that agent.
func newEnvHost(t *testing.T, p hosttest.Pool, configure ...func(*sandbox.Config)) (*env, *agentclient.Client) {
	t.Helper()
	a := hosttest.StartAgent(t, p, configure...)
	return newEnvAgent(t, a.URL, hosttest.AgentToken), a.Client(t)
}

func (e *env) signup(t *testing.T, email string) (Account, Principal) {
	t.Helper()
	a, err := e.acc.Signup(context.Background(), Signup{Email: email, Password: "correct horse battery", Name: "T"})
	if err != nil {
		t.Fatal(err)
	}
	return a, Principal{UserID: userIDOf(a.User.ID), TeamID: a.Team.ID, Role: a.Role}
}

func TestSignupLogin(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, _ := e.signup(t, "Ada@example.com")
	if a.Role != "owner" || a.Team.ID.IsZero() || teamIDOf(a.User.DefaultTeamID) != a.Team.ID {
		t.Fatalf("account = %+v", a)
	}
	m, err := e.st.Queries().GetMembership(ctx, db.GetMembershipParams{UserID: a.User.ID, TeamID: pgUUID(a.Team.ID)})
	if err != nil || m.Role != "owner" {
		t.Fatalf("membership = %+v, %v", m, err)
	}

	for _, tc := range []struct {
		name string
		s    Signup
		want error
	}{
		{"duplicate e-mail, other case", Signup{Email: "ada@EXAMPLE.com", Password: "correct horse battery"}, ErrConflict},
		{"bad e-mail", Signup{Email: "not-an-email", Password: "correct horse battery"}, ErrInvalid},
		{"short password", Signup{Email: "bob@example.com", Password: "short"}, ErrInvalid},
		{"long name", Signup{Email: "bob@example.com", Password: "correct horse battery", Name: strings.Repeat("x", 129)}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.acc.Signup(ctx, tc.s); !errors.Is(err, tc.want) {
				t.Fatalf("Signup = %v, want %v", err, tc.want)
			}
		})
	}
	if n, _ := e.st.Queries().CountUsers(ctx); n != 1 {
		t.Fatalf("%d users after refused signups, want 1", n)
	}

	sess, err := e.acc.Login(ctx, "ada@example.com", "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.acc.AuthenticateJWT(ctx, sess.Token)
	if err != nil || p.UserID != userIDOf(a.User.ID) || p.TeamID != a.Team.ID || p.Role != "owner" {
		t.Fatalf("AuthenticateJWT = %+v, %v", p, err)
	}
	for _, tc := range []struct{ email, pw string }{
		{"ada@example.com", "wrong password!!"},
		{"nobody@example.com", "correct horse battery"},
	} {
		if _, err := e.acc.Login(ctx, tc.email, tc.pw); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("Login(%s) = %v, want ErrUnauthorized", tc.email, err)
		}
	}
	if _, err := e.acc.AuthenticateJWT(ctx, sess.Token+"x"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("tampered JWT: %v", err)
	}
	// Membership is checked in the database, not taken from the token.
	if _, err := e.st.Queries().RemoveTeamMember(ctx, db.RemoveTeamMemberParams{UserID: a.User.ID, TeamID: pgUUID(a.Team.ID)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.acc.AuthenticateJWT(ctx, sess.Token); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("JWT of a removed member: %v", err)
	}
}

func TestAPIKeys(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "a@example.com")
	_, other := e.signup(t, "b@example.com")

	k, err := e.acc.CreateAPIKey(ctx, p, "ci")
	if err != nil {
		t.Fatal(err)
	}
	if auth.ValidateAPIKey(k.Plaintext) != nil || !auth.APIKeyMatches(k.Plaintext, k.Key.KeyHash) {
		t.Fatalf("key %q does not match its stored hash", k.Plaintext)
	}
	if strings.Contains(string(k.Key.KeyHash), k.Plaintext) {
		t.Fatal("plaintext stored")
	}
	if _, err := e.acc.CreateAPIKey(ctx, p, "ci"); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := e.acc.CreateAPIKey(ctx, p, " "); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty name: %v", err)
	}
	got, err := e.acc.AuthenticateAPIKey(ctx, k.Plaintext)
	if err != nil || got.TeamID != p.TeamID || got.APIKeyID != apiKeyIDOf(k.Key.ID) || got.UserID != p.UserID {
		t.Fatalf("AuthenticateAPIKey = %+v, %v", got, err)
	}
	ks, err := e.acc.ListAPIKeys(ctx, p)
	if err != nil || len(ks) != 1 || !ks[0].LastUsedAt.Valid {
		t.Fatalf("ListAPIKeys = %+v, %v (want one key, used)", ks, err)
	}
	if ks, _ := e.acc.ListAPIKeys(ctx, other); len(ks) != 0 {
		t.Fatalf("another team sees %d keys", len(ks))
	}
	if err := e.acc.RevokeAPIKey(ctx, other, apiKeyIDOf(k.Key.ID)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke by another team: %v", err)
	}
	if err := e.acc.RevokeAPIKey(ctx, p, apiKeyIDOf(k.Key.ID)); err != nil {
		t.Fatal(err)
	}
	if err := e.acc.RevokeAPIKey(ctx, p, apiKeyIDOf(k.Key.ID)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
	for _, key := range []string{k.Plaintext, "e2b_" + strings.Repeat("0", 40), "garbage", ""} {
		if _, err := e.acc.AuthenticateAPIKey(ctx, key); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("AuthenticateAPIKey(%q) = %v", key, err)
		}
	}
}

func countSandboxes(t *testing.T, e *env, team pgtype.UUID) int {
	t.Helper()
	rows, err := e.st.Queries().ListSandboxes(context.Background(), db.ListSandboxesParams{TeamID: team, States: []string{}, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(rows)
}

// TestCreateRefusals: invalid requests and quotas refuse before anything is
// stored or any agent is called (the agent here is unreachable).
func TestCreateRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, p := e.signup(t, "q@example.com")
	if _, err := e.st.Queries().SetTeamQuotas(ctx, db.SetTeamQuotasParams{
		ID:                    pgUUID(a.Team.ID),
		MaxRunningSandboxes:   pgtype.Int4{Int32: 5, Valid: true},
		MaxVCPUsPerSandbox:    pgtype.Int4{Int32: 4, Valid: true},
		MaxMemoryMBPerSandbox: pgtype.Int4{Int32: 2048, Valid: true},
		MaxTotalVCPUs:         pgtype.Int4{Int32: 6, Valid: true},
		MaxTotalMemoryMB:      pgtype.Int8{Int64: 4096, Valid: true},
	}); err != nil {
		t.Fatal(err)
	}
	// Two running sandboxes hold 4 vCPUs and 3072 MiB.
	for range 2 {
		if _, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
			TeamID: pgUUID(a.Team.ID), Template: "base", State: store.SandboxRunning, VCPUs: 2, MemoryMB: 1536, Metadata: []byte(`{}`),
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		req  CreateSandbox
		want error
	}{
		{"bad template", CreateSandbox{Template: "../etc"}, ErrInvalid},
		{"negative vcpus", CreateSandbox{VCPUs: -1}, ErrInvalid},
		{"negative timeout", CreateSandbox{TimeoutSec: -1}, ErrInvalid},
		{"bad env name", CreateSandbox{EnvVars: map[string]string{"A=B": "x"}}, ErrInvalid},
		{"pause without memory, no auto-pause", CreateSandbox{AutoPause: new(bool), PauseWithoutMemory: true}, ErrInvalid},
		{"pause without memory, auto-resume", CreateSandbox{PauseWithoutMemory: true, AutoResume: true}, ErrInvalid},
		{"vcpus per sandbox", CreateSandbox{VCPUs: 5}, ErrQuota},
		{"memory per sandbox", CreateSandbox{MemoryMB: 4096}, ErrQuota},
		{"total vcpus", CreateSandbox{VCPUs: 3}, ErrQuota},
		{"total memory", CreateSandbox{MemoryMB: 1100}, ErrQuota},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.sbx.Create(ctx, p, tc.req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Create = %v, want %v", err, tc.want)
			}
			if msg, ok := PublicMessage(err); !ok || msg == "" {
				t.Fatalf("no public message in %v", err)
			}
			if n := countSandboxes(t, e, pgUUID(a.Team.ID)); n != 2 {
				t.Fatalf("%d sandboxes after a refused create, want 2", n)
			}
		})
	}
	if _, err := e.st.Queries().SetTeamQuotas(ctx, db.SetTeamQuotasParams{ID: pgUUID(a.Team.ID), MaxRunningSandboxes: pgtype.Int4{Int32: 2, Valid: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sbx.Create(ctx, p, CreateSandbox{}); !errors.Is(err, ErrQuota) {
		t.Fatalf("running sandboxes quota: %v", err)
	}
}

// TestCreateAgentUnreachable: the sandbox is persisted as starting before
// the agent call and as error after it failed; it then holds no quota.
func TestCreateAgentUnreachable(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, p := e.signup(t, "u@example.com")
	_, err := e.sbx.Create(ctx, p, CreateSandbox{Metadata: map[string]string{"k": "v"}})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Create = %v, want ErrUnavailable", err)
	}
	rows, err := e.st.Queries().ListSandboxes(ctx, db.ListSandboxesParams{TeamID: pgUUID(a.Team.ID), States: []string{}, PageSize: 10})
	if err != nil || len(rows) != 1 {
		t.Fatalf("rows = %v, %v", rows, err)
	}
	if rows[0].State != store.SandboxError || rows[0].StateReason == "" {
		t.Fatalf("state %q (%q), want error with a reason", rows[0].State, rows[0].StateReason)
	}
	use, _ := e.st.Queries().CountTeamSandboxUsage(ctx, db.CountTeamSandboxUsageParams{TeamID: pgUUID(a.Team.ID), States: activeStates})
	if use.Sandboxes != 0 {
		t.Fatalf("a failed sandbox holds quota: %+v", use)
	}
	// Destroying it needs no agent answer... but the agent is unreachable:
	// the error says so and nothing changes.
	if err := e.sbx.Destroy(ctx, p, sandboxIDOf(rows[0].ID)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Destroy with the agent down = %v", err)
	}
}

func TestSandboxTeamScope(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, p := e.signup(t, "owner@example.com")
	_, other := e.signup(t, "other@example.com")
	var ids []pgtype.UUID
	for i := range 3 {
		r, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
			TeamID: pgUUID(a.Team.ID), Template: "base", State: []string{store.SandboxStopped, store.SandboxPaused, store.SandboxStopped}[i],
			VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{"i":"` + string(rune('0'+i)) + `"}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	for _, id := range ids {
		if _, err := e.sbx.Get(ctx, other, sandboxIDOf(id)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get by another team: %v", err)
		}
		if err := e.sbx.Destroy(ctx, other, sandboxIDOf(id)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Destroy by another team: %v", err)
		}
		if _, err := e.sbx.Pause(ctx, other, sandboxIDOf(id)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Pause by another team: %v", err)
		}
		if _, err := e.sbx.Resume(ctx, other, sandboxIDOf(id)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Resume by another team: %v", err)
		}
	}
	// Destroying a stopped sandbox is a no-op, with no agent call.
	if err := e.sbx.Destroy(ctx, p, sandboxIDOf(ids[0])); err != nil {
		t.Fatalf("Destroy of a stopped sandbox: %v", err)
	}
	// Pausing a stopped sandbox is a conflict, persisted nothing.
	if _, err := e.sbx.Pause(ctx, p, sandboxIDOf(ids[0])); !errors.Is(err, ErrConflict) && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Pause of a stopped sandbox: %v", err)
	}
	if items, _, _ := e.sbx.List(ctx, other, ListFilter{}); len(items) != 0 {
		t.Fatalf("another team lists %d sandboxes", len(items))
	}

	for _, tc := range []struct {
		name string
		f    ListFilter
		want int
	}{
		{"all", ListFilter{}, 3},
		{"stopped", ListFilter{States: []string{store.SandboxStopped}}, 2},
		{"paused or stopped", ListFilter{States: []string{store.SandboxPaused, store.SandboxStopped}}, 3},
		{"metadata", ListFilter{Metadata: map[string]string{"i": "1"}}, 1},
		{"metadata, no match", ListFilter{Metadata: map[string]string{"i": "9"}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			items, _, err := e.sbx.List(ctx, p, tc.f)
			if err != nil || len(items) != tc.want {
				t.Fatalf("List = %d items, %v; want %d", len(items), err, tc.want)
			}
		})
	}
	// Pages of one, newest first, cover every sandbox once.
	var seen []pgtype.UUID
	cursor := ""
	for {
		items, next, err := e.sbx.List(ctx, p, ListFilter{Limit: 1, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			seen = append(seen, pgUUID(it.ID))
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 3 || seen[0] != ids[2] || seen[2] != ids[0] {
		t.Fatalf("paged = %v, want %v reversed", seen, ids)
	}
	for _, f := range []ListFilter{{States: []string{"bogus"}}, {Cursor: "!!"}, {Limit: 1000}} {
		if _, _, err := e.sbx.List(ctx, p, f); !errors.Is(err, ErrInvalid) {
			t.Errorf("List(%+v) = %v, want ErrInvalid", f, err)
		}
	}
}

// TestResumeQuota: resuming is refused over quota, under the team lock,
// before any agent call; the sandbox stays paused.
func TestResumeQuota(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, p := e.signup(t, "r@example.com")
	if _, err := e.st.Queries().SetTeamQuotas(ctx, db.SetTeamQuotasParams{ID: pgUUID(a.Team.ID), MaxRunningSandboxes: pgtype.Int4{Int32: 1, Valid: true}}); err != nil {
		t.Fatal(err)
	}
	ins := func(state string) db.Sandbox {
		r, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
			TeamID: pgUUID(a.Team.ID), Template: "base", State: state, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ins(store.SandboxRunning)
	paused := ins(store.SandboxPaused)
	if _, err := e.sbx.Resume(ctx, p, sandboxIDOf(paused.ID)); !errors.Is(err, ErrQuota) {
		t.Fatalf("Resume over quota = %v, want ErrQuota", err)
	}
	got, err := e.st.Queries().GetSandboxByID(ctx, paused.ID)
	if err != nil || got.State != store.SandboxPaused {
		t.Fatalf("after a refused resume: %q, %v", got.State, err)
	}
}
