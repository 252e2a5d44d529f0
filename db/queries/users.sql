-- name: CreateUser :one
INSERT INTO users (email, name, password_hash, is_admin)
VALUES (@email, @name, sqlc.narg('password_hash'), @is_admin)
RETURNING *;

-- name: GetUser :one
SELECT * FROM users WHERE id = @id;

-- name: GetUserByEmail :one
-- E-mail addresses compare case-insensitively.
SELECT * FROM users WHERE lower(email) = lower(@email::text);

-- name: SearchUsersByEmailPrefix :many
-- The add-member typeahead. LIKE metacharacters (\ % _) in prefix are escaped
-- here, so a prefix matches only literally; the caller enforces a minimum
-- length. Password hashes are not returned.
SELECT id, email, name FROM users
WHERE lower(email) LIKE
      lower(replace(replace(replace(@prefix::text, '\', '\\'), '%', '\%'), '_', '\_')) || '%' ESCAPE '\'
ORDER BY lower(email)
LIMIT @max_results;

-- name: UpdateUserName :one
UPDATE users SET name = @name WHERE id = @id RETURNING *;

-- name: SetUserPassword :exec
UPDATE users SET password_hash = sqlc.narg('password_hash') WHERE id = @id;

-- name: SetUserAdmin :exec
UPDATE users SET is_admin = @is_admin WHERE id = @id;

-- name: SetUserDefaultTeam :exec
UPDATE users SET default_team_id = sqlc.narg('team_id') WHERE id = @id;

-- name: CountUsers :one
SELECT count(*) FROM users;
