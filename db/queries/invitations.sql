-- name: CreateInvitation :one
INSERT INTO team_invitations (team_id, email, role, token_hash, created_by, expires_at)
VALUES (@team_id, @email, @role, @token_hash, @created_by, @expires_at)
RETURNING *;

-- name: ListInvitations :many
-- A team's invitations, newest first (redeemed and expired ones included).
SELECT * FROM team_invitations
WHERE team_id = @team_id
ORDER BY created_at DESC, id DESC;

-- name: LockInvitationByTokenHash :one
-- The invitation of a token, with its team's liveness, row-locked for the
-- sign-up that redeems it: a concurrent sign-up with the same token waits
-- here and then sees redeemed_at set.
SELECT sqlc.embed(team_invitations), (teams.deleted_at IS NULL)::boolean AS team_live
FROM team_invitations
JOIN teams ON teams.id = team_invitations.team_id
WHERE team_invitations.token_hash = @token_hash
FOR UPDATE OF team_invitations;

-- name: RedeemInvitation :execrows
UPDATE team_invitations SET redeemed_at = @redeemed_at, redeemed_by = @redeemed_by
WHERE id = @id AND redeemed_at IS NULL;

-- name: DeletePendingInvitation :one
-- Revokes an invitation not yet redeemed (a redeemed one is history).
DELETE FROM team_invitations
WHERE id = @id AND team_id = @team_id AND redeemed_at IS NULL
RETURNING *;
