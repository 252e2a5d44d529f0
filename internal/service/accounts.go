package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Principal is who a request speaks for, established from the database:
// a user (session JWT) acting in one of its teams, or a team's API key.
type Principal struct {
	// UserID is the user (invalid for an API key without a creator).
	UserID UserID
	// TeamID is the team every team-scoped call acts in.
	TeamID TeamID
	// APIKeyID is the key used (invalid for a session).
	APIKeyID APIKeyID
	// Role is the user's role in TeamID (from the database; "" for an API
	// key).
	Role string
	// ActorName names the principal in the audit log: the user's e-mail
	// address, or the API key's name.
	ActorName string
}

// Accounts: users, teams (the default one), sessions and API keys.
//
// API keys are a team's credentials for programs: creating or revoking one
// takes a user's session (a leaked key cannot mint more keys or revoke the
// others), and a member revokes only the keys they created (admins and
// owners any key of the team). A key lives as long as its creator's
// membership: leaving or being removed from the team revokes the keys the
// user created there (audited, in the same transaction), and the
// authentication query joins the creator's membership as well, so that a
// key whose creator is gone by any other path (a deleted user) does not
// authenticate either.
type Accounts struct {
	st       *store.Store
	hasher   *auth.PasswordHasher
	sessions *auth.SessionManager
	audit    *Audit
	log      *slog.Logger
	signup   SignupPolicy
	now      func() time.Time
}

// AccountsConfig configures NewAccounts.
type AccountsConfig struct {
	Store    *store.Store
	Hasher   *auth.PasswordHasher
	Sessions *auth.SessionManager
	// Audit records API-key events (a new one over Store when nil).
	Audit *Audit
	// Signup is who may sign up through Signup (SignupInvite when empty;
	// the bootstrap admin is exempt).
	Signup SignupPolicy
	// Now is the clock of invitation expiry; time.Now when nil.
	Now func() time.Time
	Log *slog.Logger
}

// NewAccounts returns the accounts service.
func NewAccounts(cfg AccountsConfig) (*Accounts, error) {
	if cfg.Store == nil || cfg.Hasher == nil || cfg.Sessions == nil {
		return nil, errors.New("service: accounts need a store, a password hasher and a session manager")
	}
	log, audit := logAndAudit(cfg.Store, cfg.Log, cfg.Audit)
	policy := cfg.Signup
	if policy == "" {
		policy = SignupInvite
	}
	if _, err := ParseSignupPolicy(string(policy)); err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Accounts{st: cfg.Store, hasher: cfg.Hasher, sessions: cfg.Sessions, audit: audit, signup: policy, now: now,
		log: log.With("component", "accounts")}, nil
}

// SignupPolicy returns who may sign up.
func (a *Accounts) SignupPolicy() SignupPolicy { return a.signup }

// Signup is a new account's request.
type Signup struct {
	Email    string
	Password string
	Name     string
	// IsAdmin makes the user a platform admin (bootstrap only, never from
	// the API); it is exempt from the sign-up policy.
	IsAdmin bool
	// Invitation is a team invitation's token (see Teams.CreateInvitation):
	// required when the policy is SignupInvite, optional when SignupOpen.
	Invitation string
}

// Account is a user with its default team and role there.
type Account struct {
	User db.User
	Team Team
	Role string
}

// Principal is the account's user acting in its team (ActorName unset).
func (a Account) Principal() Principal {
	return Principal{UserID: userIDOf(a.User.ID), TeamID: a.Team.ID, Role: a.Role}
}

func validateEmail(email string) (string, error) {
	email = strings.TrimSpace(email)
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > 320 {
		return "", errorf(ErrInvalid, "invalid e-mail address")
	}
	return email, nil
}

// Signup creates a user in one transaction, under the sign-up policy:
// SignupClosed refuses every sign-up, SignupInvite every one without a
// valid invitation (ErrForbidden, and nothing is written).
//
// Without an invitation the user gets its own team, as its owner. With
// one, the invitation is redeemed under its row lock (two sign-ups with one
// token: one wins, the other sees it used): it must be unused, unexpired,
// of a live team and issued for the sign-up's e-mail address (compared
// case-insensitively); the user joins the invitation's team with its role,
// which becomes the default team, and gets no team of its own (it may
// create teams like any user). A registered e-mail address is ErrConflict
// (the invitation stays unused).
func (a *Accounts) Signup(ctx context.Context, s Signup) (Account, error) {
	if !s.IsAdmin {
		switch {
		case a.signup == SignupClosed:
			return Account{}, errorf(ErrForbidden, "sign-up is closed on this server: ask an administrator for an account")
		case a.signup == SignupInvite && s.Invitation == "":
			return Account{}, errorf(ErrForbidden, "sign-up is by invitation only: ask a team owner or admin for an invitation")
		}
	}
	if s.Invitation != "" && auth.ValidateInvitationToken(s.Invitation) != nil {
		return Account{}, errInvitation
	}
	email, err := validateEmail(s.Email)
	if err != nil {
		return Account{}, err
	}
	if err := auth.CheckPasswordPolicy(s.Password); err != nil {
		return Account{}, &Error{Kind: ErrInvalid, Msg: "password: " + err.Error()}
	}
	name := strings.TrimSpace(s.Name)
	if len(name) > 128 {
		return Account{}, errorf(ErrInvalid, "name: at most 128 characters")
	}
	hash, err := a.hasher.Hash(ctx, s.Password)
	if err != nil {
		return Account{}, fmt.Errorf("signup: hash password: %w", err)
	}
	var acc Account
	err = a.st.Tx(ctx, func(q *db.Queries) error {
		var inv db.TeamInvitation
		if s.Invitation != "" {
			if inv, err = a.lockInvitation(ctx, q, s.Invitation, email); err != nil {
				return err
			}
		}
		u, err := q.CreateUser(ctx, db.CreateUserParams{
			Email: email, Name: name, PasswordHash: pgtype.Text{String: hash, Valid: true}, IsAdmin: s.IsAdmin,
		})
		if err != nil {
			if errors.Is(err, store.ErrConflict) {
				return &Error{Kind: ErrConflict, Msg: "this e-mail address is already registered", Err: err}
			}
			return fmt.Errorf("create user: %w", err)
		}
		if inv.ID.Valid {
			acc, err = a.redeemInvitation(ctx, q, inv, u)
			return err
		}
		t, err := q.CreateTeam(ctx, db.CreateTeamParams{Name: defaultTeamName(name, email)})
		if err != nil {
			return fmt.Errorf("create team: %w", err)
		}
		if _, err := q.AddTeamMember(ctx, db.AddTeamMemberParams{UserID: u.ID, TeamID: t.ID, Role: "owner"}); err != nil {
			return fmt.Errorf("add owner: %w", err)
		}
		if err := q.SetUserDefaultTeam(ctx, db.SetUserDefaultTeamParams{TeamID: t.ID, ID: u.ID}); err != nil {
			return fmt.Errorf("default team: %w", err)
		}
		u.DefaultTeamID = t.ID
		acc = Account{User: u, Team: teamView(t), Role: "owner"}
		return nil
	})
	if err != nil {
		return Account{}, err
	}
	a.log.InfoContext(ctx, "signup", "user", wireid.Format(wireid.User, acc.User.ID), "team", acc.Team.ID.String(),
		"invited", s.Invitation != "")
	return acc, nil
}

// Session is a logged-in user's token.
type Session struct {
	Token     string
	ExpiresAt time.Time
	Account   Account
}

var errBadLogin = errorf(ErrUnauthorized, "wrong e-mail address or password")

// Login checks the password (argon2id; the same work is done for an
// unknown address) and issues a session JWT for the user's default team.
func (a *Accounts) Login(ctx context.Context, email, password string) (Session, error) {
	u, err := a.st.Queries().GetUserByEmail(ctx, strings.TrimSpace(email))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !u.PasswordHash.Valid) {
		if _, derr := a.hasher.VerifyDummy(ctx, password); derr != nil {
			return Session{}, fmt.Errorf("login: %w", derr)
		}
		return Session{}, errBadLogin
	}
	if err != nil {
		return Session{}, fmt.Errorf("login: %w", err)
	}
	ok, rehash, err := a.hasher.Verify(ctx, password, u.PasswordHash.String)
	if err != nil {
		return Session{}, fmt.Errorf("login: verify: %w", err)
	}
	if !ok {
		return Session{}, errBadLogin
	}
	if err := checkEnabled(u); err != nil {
		return Session{}, err
	}
	if rehash {
		if h, err := a.hasher.Hash(ctx, password); err == nil {
			if err := a.st.Queries().SetUserPassword(ctx, db.SetUserPasswordParams{PasswordHash: pgtype.Text{String: h, Valid: true}, ID: u.ID}); err != nil {
				a.log.WarnContext(ctx, "rehash password", "err", err)
			}
		}
	}
	acc := Account{User: u}
	su := auth.SessionUser{UserID: wireid.Format(wireid.User, u.ID), Name: u.Name, Email: u.Email, IsAdmin: u.IsAdmin}
	if row, err := a.st.Queries().GetDefaultTeamForUser(ctx, u.ID); err == nil {
		acc.Team, acc.Role = teamView(row.Team), row.Role
		su.TeamID, su.Role = wireid.Format(wireid.Team, row.Team.ID), row.Role
	} else if !errors.Is(err, store.ErrNotFound) {
		return Session{}, fmt.Errorf("login: default team: %w", err)
	}
	token, claims, err := a.sessions.Issue(su)
	if err != nil {
		return Session{}, fmt.Errorf("login: issue token: %w", err)
	}
	return Session{Token: token, ExpiresAt: claims.ExpiresAt, Account: acc}, nil
}

// AuthenticateJWT verifies a session token and checks in the database that
// the user exists, is not disabled (ErrForbidden) and is still a member of
// the token's team (the token's role is only a hint; the principal's role
// comes from the database).
func (a *Accounts) AuthenticateJWT(ctx context.Context, token string) (Principal, error) {
	claims, err := a.verifySession(ctx, token)
	if err != nil {
		return Principal{}, err
	}
	uid, err := wireid.Parse(wireid.User, claims.UserID)
	if err != nil {
		return Principal{}, errorf(ErrUnauthorized, "invalid session token")
	}
	tid, err := wireid.Parse(wireid.Team, claims.TeamID)
	if err != nil {
		return Principal{}, errorf(ErrForbidden, "the session has no team")
	}
	u, err := a.st.Queries().GetSessionUser(ctx, db.GetSessionUserParams{TeamID: tid, UserID: uid})
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, errorf(ErrUnauthorized, "the session's user no longer exists")
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate session: %w", err)
	}
	if u.DisabledAt.Valid {
		return Principal{}, errDisabled
	}
	if u.Role == "" {
		return Principal{}, errorf(ErrUnauthorized, "the session's team is no longer yours")
	}
	return Principal{UserID: userIDOf(uid), TeamID: teamIDOf(tid), Role: u.Role, ActorName: u.Email}, nil
}

// AuthenticateAPIKey finds the live key of a live team and records its use
// (at most once a minute). The key of a disabled user is refused
// (ErrForbidden) until the user is re-enabled.
func (a *Accounts) AuthenticateAPIKey(ctx context.Context, key string) (Principal, error) {
	if err := auth.ValidateAPIKey(key); err != nil {
		return Principal{}, errorf(ErrUnauthorized, "invalid API key")
	}
	k, err := a.st.Queries().AuthenticateAPIKey(ctx, auth.HashAPIKey(key))
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, errorf(ErrUnauthorized, "invalid API key")
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate API key: %w", err)
	}
	if k.CreatorDisabledAt.Valid {
		return Principal{}, errorf(ErrForbidden, "the API key's creator is disabled: ask a platform admin")
	}
	return Principal{UserID: userIDOf(k.CreatedBy), TeamID: teamIDOf(k.TeamID), APIKeyID: apiKeyIDOf(k.ID), ActorName: k.Name}, nil
}

// NewAPIKey is a created key: Plaintext is shown once and never stored.
type NewAPIKey struct {
	Key       db.TeamAPIKey
	Plaintext string
}

// CreateAPIKey creates a named key of p's team (the name is unique among
// the team's live keys: ErrConflict).
func (a *Accounts) CreateAPIKey(ctx context.Context, p Principal, name string) (NewAPIKey, error) {
	if err := requireUser(p); err != nil {
		return NewAPIKey{}, &Error{Kind: ErrForbidden, Msg: "creating an API key needs a user session (Authorization: Bearer <session token>), not an API key"}
	}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 128 {
		return NewAPIKey{}, errorf(ErrInvalid, "name: 1 to 128 characters")
	}
	gen := auth.GenerateAPIKey()
	var k db.TeamAPIKey
	err := a.st.Tx(ctx, func(q *db.Queries) error {
		var err error
		k, err = q.CreateAPIKey(ctx, db.CreateAPIKeyParams{
			TeamID: pgUUID(p.TeamID), Name: name, Prefix: gen.DisplayPrefix, KeyHash: gen.Hash, CreatedBy: pgUUID(p.UserID),
		})
		if err != nil {
			return err
		}
		return a.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "api_key",
			ResourceID: wireid.Format(wireid.APIKey, k.ID), Action: "api_key.create", Scope: ScopeAdmin,
			Metadata: map[string]any{"name": name, "prefix": gen.DisplayPrefix}})
	})
	if errors.Is(err, store.ErrConflict) {
		return NewAPIKey{}, &Error{Kind: ErrConflict, Msg: fmt.Sprintf("an API key named %q exists already", name), Err: err}
	}
	if err != nil {
		return NewAPIKey{}, fmt.Errorf("create API key: %w", err)
	}
	a.log.InfoContext(ctx, "API key created", "team", p.TeamID.String(), "key", wireid.Format(wireid.APIKey, k.ID))
	return NewAPIKey{Key: k, Plaintext: gen.Plaintext}, nil
}

// ListAPIKeys lists the live keys of p's team, newest first.
func (a *Accounts) ListAPIKeys(ctx context.Context, p Principal) ([]db.TeamAPIKey, error) {
	ks, err := a.st.Queries().ListAPIKeys(ctx, pgUUID(p.TeamID))
	if err != nil {
		return nil, fmt.Errorf("list API keys: %w", err)
	}
	return ks, nil
}

// RevokeAPIKey revokes a key of p's team (a session only: ErrForbidden for
// an API key). A member revokes the keys they created; revoking another's
// key takes the admin or owner role (ErrForbidden; the role is read in the
// transaction). Another team's key, or a revoked one, is ErrNotFound.
func (a *Accounts) RevokeAPIKey(ctx context.Context, p Principal, id APIKeyID) error {
	if err := requireUser(p); err != nil {
		return &Error{Kind: ErrForbidden, Msg: "revoking an API key needs a user session (Authorization: Bearer <session token>), not an API key"}
	}
	err := a.st.Tx(ctx, func(q *db.Queries) error {
		k, err := q.GetAPIKey(ctx, db.GetAPIKeyParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID)})
		if err != nil {
			return notFound(err, "API key")
		}
		if k.RevokedAt.Valid {
			return errorf(ErrNotFound, "API key not found")
		}
		if userIDOf(k.CreatedBy) != p.UserID {
			m, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: pgUUID(p.UserID), TeamID: pgUUID(p.TeamID)})
			if err != nil {
				return notFound(err, "API key")
			}
			if !adminRole(m.Role) {
				return errorf(ErrForbidden, "revoking an API key that another member created needs the admin or owner role")
			}
		}
		if _, err := q.RevokeAPIKey(ctx, db.RevokeAPIKeyParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID)}); err != nil {
			return notFound(err, "API key")
		}
		return a.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "api_key",
			ResourceID: id.String(), Action: "api_key.revoke", Scope: ScopeAdmin,
			Metadata: map[string]any{"name": k.Name}})
	})
	if err != nil {
		return err
	}
	a.log.InfoContext(ctx, "API key revoked", "team", p.TeamID.String(), "key", id.String())
	return nil
}

// revokeCreatorKeys revokes, in q's transaction, the live keys that user
// created in team (the user is leaving it or removed from it), recording
// each revocation with reason (the member event that caused it).
func revokeCreatorKeys(ctx context.Context, q *db.Queries, audit *Audit, team, user pgtype.UUID, actor Actor, reason string) error {
	ks, err := q.RevokeAPIKeysOfCreator(ctx, db.RevokeAPIKeysOfCreatorParams{TeamID: team, CreatedBy: user})
	if err != nil {
		return fmt.Errorf("revoke the member's API keys: %w", err)
	}
	for _, k := range ks {
		if err := audit.Record(ctx, q, teamIDOf(team), actor, AuditEvent{ResourceType: "api_key",
			ResourceID: wireid.Format(wireid.APIKey, k.ID), Action: "api_key.revoke", Scope: ScopeAdmin,
			Metadata: map[string]any{"name": k.Name, "reason": reason, "created_by": userID(user)}}); err != nil {
			return err
		}
	}
	return nil
}
