package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// EnsureEmbedded prepares the host record of an agent that runs in this
// process (capsule serve's), which then registers like any other agent:
// with a one-time token (POST /v1/hosts/register), for the address the
// record declares, over mutual TLS afterwards. One node stays one command.
//
// The record is the regular (platform) host called name, at address (the
// agent's loopback HOST:PORT, which may change from one start to the
// next: the record follows). When the agent holds credentials for that
// record (agentHostID, its wire ID, "" when it holds none) no token is
// needed and "" is returned. Otherwise the record is created (audited
// host.created by the system) or adopted — the row an older capsule serve
// made for its static embedded agent, whose sandboxes keep their host —
// and a new registration token is returned. Credentials for another host
// are refused: the data directory belongs to another database.
func (h *Hosts) EnsureEmbedded(ctx context.Context, name, address, agentHostID string) (string, error) {
	addr, err := validateHostAddress(address)
	if err != nil {
		return "", err
	}
	var token string
	err = h.st.Tx(ctx, func(q *db.Queries) error {
		row, err := q.GetHostByName(ctx, name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			tok := h.tokens.NewRegistrationToken()
			row, err = q.CreateHostRecord(ctx, db.CreateHostRecordParams{TeamID: store.PlatformTeamID, Name: name, Address: addr,
				Tags: []string{}, TokenHash: tok.Hash, TokenExpiresAt: tok.ExpiresAt})
			if err != nil {
				return fmt.Errorf("create the embedded host: %w", err)
			}
			token = tok.Plaintext
			return h.audit.Record(ctx, q, teamIDOf(store.PlatformTeamID), SystemActor, AuditEvent{ResourceType: "host", ResourceID: hostWireID(row.ID),
				Action: "host.created", Scope: ScopeAdmin, Metadata: map[string]any{"name": name, "type": HostRegular, "address": addr, "embedded": true}})
		case err != nil:
			return fmt.Errorf("get the embedded host: %w", err)
		}
		if row.TeamID != store.PlatformTeamID {
			return errorf(ErrConflict, "the host name %q belongs to a team's host", name)
		}
		if agentHostID != "" && agentHostID != hostWireID(row.ID) {
			return errorf(ErrConflict, "the embedded agent holds credentials of host %s, not of %s (%s): its data directory belongs to another database",
				agentHostID, name, hostWireID(row.ID))
		}
		var hash []byte
		var exp pgtype.Timestamptz
		adopt := agentHostID == "" || !row.RegisteredAt.Valid
		if adopt {
			tok := h.tokens.NewRegistrationToken()
			hash, exp, token = tok.Hash, pgtype.Timestamptz{Time: tok.ExpiresAt, Valid: true}, tok.Plaintext
		}
		if _, err := q.AdoptEmbeddedHost(ctx, db.AdoptEmbeddedHostParams{Name: name, Address: addr, TokenHash: hash,
			TokenExpiresAt: exp.Time}); err != nil {
			return fmt.Errorf("adopt the embedded host: %w", err)
		}
		if adopt && !row.RegisteredAt.Valid {
			return h.audit.Record(ctx, q, teamIDOf(store.PlatformTeamID), SystemActor, AuditEvent{ResourceType: "host", ResourceID: hostWireID(row.ID),
				Action: "host.adopted", Scope: ScopeAdmin, Metadata: map[string]any{"name": name, "address": addr, "embedded": true}})
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	// The address may have changed: the next call dials the new one.
	if row, err := h.st.Queries().GetHostByName(ctx, name); err == nil {
		h.agents.Evict(hostWireID(row.ID))
	}
	return token, nil
}
