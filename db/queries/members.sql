-- name: AddTeamMember :one
-- Already a member: a unique violation (store.ErrConflict).
INSERT INTO users_teams (user_id, team_id, role)
VALUES (@user_id, @team_id, @role)
RETURNING *;

-- name: GetMembership :one
-- The user's role in a live team: the basis of every authorization decision.
SELECT users_teams.*
FROM users_teams
JOIN teams ON teams.id = users_teams.team_id
WHERE users_teams.user_id = @user_id AND users_teams.team_id = @team_id
  AND teams.deleted_at IS NULL;

-- name: RemoveTeamMember :execrows
DELETE FROM users_teams WHERE user_id = @user_id AND team_id = @team_id;

-- name: UpdateTeamMemberRole :one
UPDATE users_teams SET role = @role
WHERE user_id = @user_id AND team_id = @team_id
RETURNING *;

-- name: ListTeamMembers :many
SELECT users.id AS user_id, users.email, users.name, users_teams.role, users_teams.created_at AS joined_at
FROM users_teams
JOIN users ON users.id = users_teams.user_id
WHERE users_teams.team_id = @team_id
ORDER BY users_teams.created_at, users.id;

-- name: CountTeamOwners :one
SELECT count(*) FROM users_teams WHERE team_id = @team_id AND role = 'owner';
