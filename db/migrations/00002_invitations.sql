-- Team invitations: how a new user signs up when the sign-up policy is
-- "invite". An owner or admin invites an e-mail address into a team with a
-- role; the invitee redeems the one-time token at sign-up.

-- +goose Up

CREATE TABLE team_invitations (
  id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  team_id     uuid        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
  -- The invitee's address as given; it must match the sign-up's address
  -- case-insensitively.
  email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1),
  role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
  -- SHA-256 of the token; the token itself is shown once and never stored.
  token_hash  bytea       NOT NULL CHECK (length(token_hash) = 32),
  created_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  -- Set once, when a sign-up redeems it (under the row lock).
  redeemed_at timestamptz,
  redeemed_by uuid        REFERENCES users (id) ON DELETE SET NULL,
  CONSTRAINT team_invitations_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX team_invitations_team_idx ON team_invitations (team_id, created_at DESC);

-- +goose Down

DROP TABLE IF EXISTS team_invitations;
