package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// OAuthResult is the outcome of an OAuth login: a session, and what
// happened to the account.
type OAuthResult struct {
	Session Session
	// Created: a new user (and its default team) was registered.
	Created bool
	// Linked: the identity was linked to an existing user just now.
	Linked bool
}

// errRetry makes OAuthLogin start over: a concurrent callback created the
// user or the identity first (a unique violation), and the next attempt
// finds it.
var errRetry = errors.New("oauth login: lost a race, retry")

const oauthAttempts = 4

// OAuthLogin signs in the user a provider vouched for (prof comes from
// Provider.Exchange, after the state check).
//
// With link valid (a linking flow started by that user's session, bound
// to it by the signed state), the identity is linked to that user; an
// identity linked to someone else, or a user linked to another identity
// of the provider, is ErrConflict.
//
// Otherwise: a known identity logs its user in. A new identity whose
// e-mail address belongs to a user is linked to that user only when the
// provider verified the address and the user has no password (it was
// itself created through a provider that verified the address): a
// password account's address was never verified by Capsule, so
// auto-linking would let whoever registered the address first (an
// attacker pre-registering a victim's address) share the account with
// its real owner. Such an account is ErrConflict: its owner logs in with
// the password and links the provider. Otherwise a new user with the
// verified address and a default team is registered, when the sign-up
// policy is SignupOpen (ErrForbidden otherwise). An unverified
// address is ErrForbidden. Registration is race-safe: concurrent
// callbacks for one new identity create exactly one user (the unique
// constraints on e-mail and identity make the losers retry as logins).
func (a *Accounts) OAuthLogin(ctx context.Context, provider string, prof oauth.Profile, link UserID) (OAuthResult, error) {
	if !oauth.ValidProviderName(provider) || prof.ProviderUserID == "" {
		return OAuthResult{}, errors.New("oauth login: invalid provider or profile")
	}
	for range oauthAttempts {
		var (
			res OAuthResult
			err error
		)
		if !link.IsZero() {
			res, err = a.oauthLink(ctx, provider, prof, pgUUID(link))
		} else {
			res, err = a.oauthLogin(ctx, provider, prof)
		}
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return OAuthResult{}, err
		}
		a.log.InfoContext(ctx, "oauth login", "provider", provider, "user", userID(res.Session.Account.User.ID),
			"created", res.Created, "linked", res.Linked)
		return res, nil
	}
	return OAuthResult{}, fmt.Errorf("oauth login: %w after %d attempts", errRetry, oauthAttempts)
}

func (a *Accounts) oauthLogin(ctx context.Context, provider string, prof oauth.Profile) (OAuthResult, error) {
	q := a.st.Queries()
	ident, err := q.GetOAuthProvider(ctx, db.GetOAuthProviderParams{Provider: provider, ProviderUserID: prof.ProviderUserID})
	if err == nil {
		u, err := q.GetUser(ctx, ident.UserID)
		if err != nil {
			return OAuthResult{}, fmt.Errorf("oauth login: user: %w", err)
		}
		s, err := a.sessionForUser(ctx, u)
		return OAuthResult{Session: s}, err
	}
	if !errors.Is(err, store.ErrNotFound) {
		return OAuthResult{}, fmt.Errorf("oauth login: identity: %w", err)
	}
	if !prof.EmailVerified || prof.Email == "" {
		return OAuthResult{}, errorf(ErrForbidden, "the provider has not verified an e-mail address of yours")
	}
	email, err := validateEmail(prof.Email)
	if err != nil {
		return OAuthResult{}, err
	}
	existing, err := q.GetUserByEmail(ctx, email)
	switch {
	case err == nil:
		if existing.PasswordHash.Valid {
			return OAuthResult{}, errorf(ErrConflict, "an account with this e-mail address exists: log in with its password, then link %s to it", provider)
		}
		if _, err := q.LinkOAuthProvider(ctx, db.LinkOAuthProviderParams{
			UserID: existing.ID, Provider: provider, ProviderUserID: prof.ProviderUserID, Email: email,
		}); err != nil {
			if store.ConstraintName(err) == "oauth_providers_user_key" {
				return OAuthResult{}, errorf(ErrConflict, "the account with this e-mail address is linked to another %s account", provider)
			}
			if errors.Is(err, store.ErrConflict) {
				return OAuthResult{}, errRetry
			}
			return OAuthResult{}, fmt.Errorf("oauth login: link: %w", err)
		}
		s, err := a.sessionForUser(ctx, existing)
		return OAuthResult{Session: s, Linked: true}, err
	case !errors.Is(err, store.ErrNotFound):
		return OAuthResult{}, fmt.Errorf("oauth login: user by e-mail: %w", err)
	}

	if a.signup != SignupOpen {
		return OAuthResult{}, errorf(ErrForbidden, "no account is registered with this e-mail address, and sign-up is %s on this server: sign up with an invitation first, then link %s", signupWord(a.signup), provider)
	}
	name := displayName(prof)
	var (
		u    db.User
		team db.Team
	)
	err = a.st.Tx(ctx, func(q *db.Queries) error {
		var err error
		u, err = q.CreateUser(ctx, db.CreateUserParams{Email: email, Name: name})
		if err != nil {
			return fmt.Errorf("create user: %w", err)
		}
		if team, err = q.CreateTeam(ctx, db.CreateTeamParams{Name: defaultTeamName(name, email)}); err != nil {
			return fmt.Errorf("create team: %w", err)
		}
		if _, err := q.AddTeamMember(ctx, db.AddTeamMemberParams{UserID: u.ID, TeamID: team.ID, Role: RoleOwner}); err != nil {
			return fmt.Errorf("add owner: %w", err)
		}
		if err := q.SetUserDefaultTeam(ctx, db.SetUserDefaultTeamParams{TeamID: team.ID, ID: u.ID}); err != nil {
			return fmt.Errorf("default team: %w", err)
		}
		u.DefaultTeamID = team.ID
		if _, err := q.LinkOAuthProvider(ctx, db.LinkOAuthProviderParams{
			UserID: u.ID, Provider: provider, ProviderUserID: prof.ProviderUserID, Email: email,
		}); err != nil {
			return fmt.Errorf("link identity: %w", err)
		}
		return nil
	})
	if errors.Is(err, store.ErrConflict) {
		// The address or the identity was registered concurrently (or a
		// team slug collided): start over, as a login this time.
		return OAuthResult{}, errRetry
	}
	if err != nil {
		return OAuthResult{}, fmt.Errorf("oauth register: %w", err)
	}
	s, err := a.issueSession(u, team, RoleOwner)
	return OAuthResult{Session: s, Created: true}, err
}

func (a *Accounts) oauthLink(ctx context.Context, provider string, prof oauth.Profile, link pgtype.UUID) (OAuthResult, error) {
	q := a.st.Queries()
	u, err := q.GetUser(ctx, link)
	if errors.Is(err, store.ErrNotFound) {
		return OAuthResult{}, errorf(ErrUnauthorized, "the user who started the linking no longer exists")
	}
	if err != nil {
		return OAuthResult{}, fmt.Errorf("oauth link: user: %w", err)
	}
	ident, err := q.GetOAuthProvider(ctx, db.GetOAuthProviderParams{Provider: provider, ProviderUserID: prof.ProviderUserID})
	switch {
	case err == nil && ident.UserID != link:
		return OAuthResult{}, errorf(ErrConflict, "this %s account is linked to another Capsule account", provider)
	case err == nil:
		// Linked already: idempotent.
		s, err := a.sessionForUser(ctx, u)
		return OAuthResult{Session: s}, err
	case !errors.Is(err, store.ErrNotFound):
		return OAuthResult{}, fmt.Errorf("oauth link: identity: %w", err)
	}
	if _, err := q.LinkOAuthProvider(ctx, db.LinkOAuthProviderParams{
		UserID: link, Provider: provider, ProviderUserID: prof.ProviderUserID, Email: prof.Email,
	}); err != nil {
		if store.ConstraintName(err) == "oauth_providers_user_key" {
			return OAuthResult{}, errorf(ErrConflict, "your account is linked to another %s account already", provider)
		}
		if errors.Is(err, store.ErrConflict) {
			return OAuthResult{}, errRetry
		}
		return OAuthResult{}, fmt.Errorf("oauth link: %w", err)
	}
	s, err := a.sessionForUser(ctx, u)
	return OAuthResult{Session: s, Linked: true}, err
}

// displayName is the profile's name, else its login, cleaned for the
// users.name column (no control characters, at most 128 bytes).
func displayName(prof oauth.Profile) string {
	name := strings.TrimSpace(prof.Name)
	if name == "" {
		name = strings.TrimSpace(prof.Login)
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, name)
	return truncateUTF8(name, 128)
}

// signupWord describes a policy that is not open.
func signupWord(p SignupPolicy) string {
	if p == SignupClosed {
		return "closed"
	}
	return "by invitation only"
}

// defaultTeamName names a new user's first team, as Signup does.
func defaultTeamName(name, email string) string {
	n := name
	if n == "" {
		n = email[:strings.IndexByte(email, '@')]
	}
	return truncateUTF8(n+"'s team", 128)
}

// truncateUTF8 cuts s to at most n bytes at a rune boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
