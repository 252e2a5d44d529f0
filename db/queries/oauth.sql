-- name: LinkOAuthProvider :one
-- An identity already linked (to anyone): a unique violation (store.ErrConflict).
INSERT INTO oauth_providers (user_id, provider, provider_user_id, email)
VALUES (@user_id, @provider, @provider_user_id, @email)
RETURNING *;

-- name: GetOAuthProvider :one
SELECT * FROM oauth_providers WHERE provider = @provider AND provider_user_id = @provider_user_id;

-- name: ListOAuthProvidersForUser :many
SELECT * FROM oauth_providers WHERE user_id = @user_id ORDER BY provider;

-- name: DeleteOAuthProvider :execrows
DELETE FROM oauth_providers WHERE user_id = @user_id AND provider = @provider;
