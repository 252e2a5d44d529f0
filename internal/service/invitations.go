package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// SignupPolicy is who may create an account through Accounts.Signup (the
// API's POST /v1/auth/signup) or a first OAuth login.
type SignupPolicy string

const (
	// SignupOpen: anyone may sign up (an invitation is optional).
	SignupOpen SignupPolicy = "open"
	// SignupInvite: only with a team invitation (the default of a fresh
	// install); OAuth logins create no new accounts.
	SignupInvite SignupPolicy = "invite"
	// SignupClosed: nobody; accounts exist only through the bootstrap
	// admin (and members are added from existing accounts).
	SignupClosed SignupPolicy = "closed"
)

// ParseSignupPolicy parses "open", "invite" or "closed".
func ParseSignupPolicy(s string) (SignupPolicy, error) {
	switch p := SignupPolicy(s); p {
	case SignupOpen, SignupInvite, SignupClosed:
		return p, nil
	}
	return "", fmt.Errorf("service: sign-up policy %q: want open, invite or closed", s)
}

// Invitation lifetimes.
const (
	DefaultInvitationTTL = 7 * 24 * time.Hour
	MaxInvitationTTL     = 30 * 24 * time.Hour
)

// Invitation is a team invitation as stored (its token hash included; the
// API never shows it).
type Invitation = db.TeamInvitation

// NewInvitation is a created invitation: Token is shown once and never
// stored.
type NewInvitation struct {
	Invitation Invitation
	Token      string
}

// errInvitation is the answer to a token that names no invitation (or is
// malformed): the same for both, so that tokens cannot be probed.
var errInvitation = errorf(ErrForbidden, "this invitation is not valid")

// lockInvitation finds the invitation of token under its row lock and
// checks that email may redeem it now. Run in the sign-up's transaction.
func (a *Accounts) lockInvitation(ctx context.Context, q *db.Queries, token, email string) (Invitation, error) {
	row, err := q.LockInvitationByTokenHash(ctx, auth.HashToken(token))
	if errors.Is(err, store.ErrNotFound) {
		return Invitation{}, errInvitation
	}
	if err != nil {
		return Invitation{}, fmt.Errorf("find invitation: %w", err)
	}
	inv := row.TeamInvitation
	switch {
	case inv.RedeemedAt.Valid:
		return Invitation{}, errorf(ErrForbidden, "this invitation has been used already")
	case !a.now().Before(inv.ExpiresAt):
		return Invitation{}, errorf(ErrForbidden, "this invitation has expired: ask for a new one")
	case !row.TeamLive:
		return Invitation{}, errorf(ErrForbidden, "the team of this invitation no longer exists")
	case !strings.EqualFold(inv.Email, email):
		return Invitation{}, errorf(ErrForbidden, "this invitation was issued for another e-mail address")
	}
	return inv, nil
}

// redeemInvitation makes the new user u a member of the invitation's team
// (its default team) and marks the invitation used. Run in the sign-up's
// transaction, after lockInvitation.
func (a *Accounts) redeemInvitation(ctx context.Context, q *db.Queries, inv Invitation, u db.User) (Account, error) {
	if n, err := q.RedeemInvitation(ctx, db.RedeemInvitationParams{ID: inv.ID, RedeemedAt: pgtype.Timestamptz{Time: a.now(), Valid: true}, RedeemedBy: u.ID}); err != nil {
		return Account{}, fmt.Errorf("redeem invitation: %w", err)
	} else if n != 1 {
		return Account{}, errorf(ErrForbidden, "this invitation has been used already")
	}
	if _, err := q.AddTeamMember(ctx, db.AddTeamMemberParams{UserID: u.ID, TeamID: inv.TeamID, Role: inv.Role}); err != nil {
		return Account{}, fmt.Errorf("join the invitation's team: %w", err)
	}
	if err := q.SetUserDefaultTeam(ctx, db.SetUserDefaultTeamParams{TeamID: inv.TeamID, ID: u.ID}); err != nil {
		return Account{}, fmt.Errorf("default team: %w", err)
	}
	u.DefaultTeamID = inv.TeamID
	team, err := q.GetTeam(ctx, inv.TeamID)
	if err != nil {
		return Account{}, fmt.Errorf("invitation's team: %w", err)
	}
	actor := Actor{Type: ActorUser, ID: userID(u.ID), Name: u.Email}
	if err := a.audit.Record(ctx, q, inv.TeamID, actor, AuditEvent{ResourceType: "invitation", ResourceID: invitationID(inv.ID),
		Action: "invitation.redeem", Metadata: map[string]any{"email": u.Email, "role": inv.Role}}); err != nil {
		return Account{}, err
	}
	return Account{User: u, Team: team, Role: inv.Role}, nil
}

// Now is the clock that invitations expire by.
func (t *Teams) Now() time.Time { return t.now() }

func invitationID(id pgtype.UUID) string { return wireid.Format(wireid.Invitation, id) }

// CreateInvitation invites email into team id with role, valid for ttl
// (DefaultInvitationTTL when 0, at most MaxInvitationTTL). Admins and
// owners invite; only owners invite owners. An address registered already
// is ErrConflict (add that user as a member instead). The token is
// returned once; only its SHA-256 is stored.
func (t *Teams) CreateInvitation(ctx context.Context, p Principal, id TeamID, email, role string, ttl time.Duration) (NewInvitation, error) {
	if err := requireUser(p); err != nil {
		return NewInvitation{}, err
	}
	if err := validateRole(role); err != nil {
		return NewInvitation{}, err
	}
	email, err := validateEmail(email)
	if err != nil {
		return NewInvitation{}, err
	}
	if ttl == 0 {
		ttl = DefaultInvitationTTL
	}
	if ttl < time.Minute || ttl > MaxInvitationTTL {
		return NewInvitation{}, errorf(ErrInvalid, "expires_in_hours: 1 to %d", int(MaxInvitationTTL/time.Hour))
	}
	var out NewInvitation
	err = t.st.Tx(ctx, func(q *db.Queries) error {
		_, m, err := lockAdmin(ctx, q, p, pgUUID(id), "inviting")
		if err != nil {
			return err
		}
		if role == RoleOwner && m.Role != RoleOwner {
			return errorf(ErrForbidden, "only owners can invite owners")
		}
		if _, err := q.GetUserByEmail(ctx, email); err == nil {
			return errorf(ErrConflict, "a user is registered with this e-mail address already: add them as a member instead")
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("find user: %w", err)
		}
		tok := auth.NewInvitationToken(t.now().Add(ttl))
		inv, err := q.CreateInvitation(ctx, db.CreateInvitationParams{TeamID: pgUUID(id), Email: email, Role: role,
			TokenHash: tok.Hash, CreatedBy: pgUUID(p.UserID), ExpiresAt: tok.ExpiresAt})
		if err != nil {
			return fmt.Errorf("create invitation: %w", err)
		}
		out = NewInvitation{Invitation: inv, Token: tok.Plaintext}
		return t.audit.Record(ctx, q, pgUUID(id), p.Actor(), AuditEvent{ResourceType: "invitation", ResourceID: invitationID(inv.ID),
			Action: "invitation.create", Metadata: map[string]any{"email": email, "role": role, "expires_at": tok.ExpiresAt.UTC()}})
	})
	if err != nil {
		return NewInvitation{}, err
	}
	t.log.InfoContext(ctx, "invitation created", "team", id.String(), "invitation", invitationID(out.Invitation.ID))
	return out, nil
}

// Invitations lists a team's invitations, newest first (admins and
// owners; ErrForbidden for a member).
func (t *Teams) Invitations(ctx context.Context, p Principal, id TeamID) ([]Invitation, error) {
	if err := requireUser(p); err != nil {
		return nil, err
	}
	q := t.st.Queries()
	m, err := membership(ctx, q, p, pgUUID(id))
	if err != nil {
		return nil, err
	}
	if !adminRole(m.Role) {
		return nil, errorf(ErrForbidden, "listing invitations needs the admin or owner role")
	}
	invs, err := q.ListInvitations(ctx, pgUUID(id))
	if err != nil {
		return nil, fmt.Errorf("list invitations: %w", err)
	}
	return invs, nil
}

// RevokeInvitation deletes an invitation not yet redeemed (admins and
// owners); a redeemed one, or another team's, is ErrNotFound.
func (t *Teams) RevokeInvitation(ctx context.Context, p Principal, id TeamID, invitation InvitationID) error {
	if err := requireUser(p); err != nil {
		return err
	}
	return t.st.Tx(ctx, func(q *db.Queries) error {
		_, _, err := lockAdmin(ctx, q, p, pgUUID(id), "revoking invitations")
		if err != nil {
			return err
		}
		inv, err := q.DeletePendingInvitation(ctx, db.DeletePendingInvitationParams{ID: pgUUID(invitation), TeamID: pgUUID(id)})
		if err != nil {
			return notFound(err, "invitation")
		}
		return t.audit.Record(ctx, q, pgUUID(id), p.Actor(), AuditEvent{ResourceType: "invitation", ResourceID: invitationID(inv.ID),
			Action: "invitation.revoke", Metadata: map[string]any{"email": inv.Email, "role": inv.Role}})
	})
}
