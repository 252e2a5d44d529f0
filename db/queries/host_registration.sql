-- Hosts created by an administrator and registered by their agent (issue 11).

-- name: CreateHostRecord :one
-- A pending host with its registration token (hash only). A name in use:
-- a unique violation (store.ErrConflict).
INSERT INTO hosts (team_id, name, address, status, tags, registration_token_hash,
                   registration_token_issued_at, registration_token_expires_at, created_by)
VALUES (@team_id, @name, @address, 'pending', @tags::text[], @token_hash, now(),
        @token_expires_at::timestamptz, @created_by)
RETURNING *;

-- name: SetHostRegistrationToken :one
-- A new registration token for a host that is still pending (no row
-- otherwise).
UPDATE hosts SET
  registration_token_hash = @token_hash,
  registration_token_issued_at = now(),
  registration_token_expires_at = @token_expires_at::timestamptz,
  registration_token_used_at = NULL
WHERE id = @id AND status = 'pending'
RETURNING *;

-- name: LockHostByRegistrationToken :one
-- The host a registration token belongs to, locked for its consumption.
SELECT * FROM hosts WHERE registration_token_hash = @token_hash FOR UPDATE;

-- name: CompleteHostRegistration :one
-- Consumes the registration token and records what the agent reported;
-- address (the declared one) is left alone. registered_at is the service's
-- clock (the access tokens' iat is compared with it).
UPDATE hosts SET
  registration_token_used_at = now(),
  registered_at = @registered_at::timestamptz,
  claimed_address = @claimed_address,
  version = @version,
  arch = @arch,
  total_vcpus = @total_vcpus,
  total_memory_mb = @total_memory_mb,
  total_disk_mb = @total_disk_mb,
  cert_serial = @cert_serial,
  cert_expires_at = @cert_expires_at
WHERE id = @id AND registration_token_used_at IS NULL
RETURNING *;

-- name: LockHost :one
SELECT * FROM hosts WHERE id = @id FOR UPDATE;

-- name: ListAllHosts :many
SELECT * FROM hosts ORDER BY name, id;

-- name: ListTeamHosts :many
SELECT * FROM hosts WHERE team_id = @team_id ORDER BY name, id;

-- name: UpdateHostSettings :one
-- An administrator's change of tags and status (the caller checks the
-- transition).
UPDATE hosts SET tags = @tags::text[], status = @status
WHERE id = @id
RETURNING *;

-- name: DeleteHostRecord :execrows
DELETE FROM hosts WHERE id = @id;

-- name: RecordHostHeartbeat :one
-- A heartbeat (a registered agent's, or the control plane's probe of a
-- static host's agent): a pending host becomes online; an unreachable one stays
-- unreachable until the host monitor reconciled its records with its agent
-- (MarkHostUp); draining and offline stay as they are.
UPDATE hosts SET
  last_heartbeat_at = now(),
  status = CASE WHEN status = 'pending' THEN 'online' ELSE status END,
  version = CASE WHEN @version::text = '' THEN version ELSE @version::text END,
  total_vcpus = @total_vcpus,
  max_vcpus = @max_vcpus,
  total_memory_mb = @total_memory_mb,
  total_disk_mb = @total_disk_mb,
  used_vcpus = @used_vcpus,
  used_memory_mb = @used_memory_mb,
  used_disk_mb = @used_disk_mb,
  running_sandboxes = @running_sandboxes,
  paused_sandboxes = @paused_sandboxes,
  sandbox_count = @sandbox_count
WHERE id = @id
RETURNING *;

-- name: SetHostCertificate :exec
UPDATE hosts SET cert_serial = @cert_serial, cert_expires_at = @cert_expires_at WHERE id = @id;

-- name: InsertHostRefreshToken :one
INSERT INTO host_refresh_tokens (host_id, token_hash, expires_at, family_id, access_token_id)
VALUES (@host_id, @token_hash, @expires_at, @family_id, @access_token_id)
RETURNING *;

-- name: LockHostRefreshToken :one
SELECT * FROM host_refresh_tokens WHERE token_hash = @token_hash FOR UPDATE;

-- name: RevokeHostRefreshToken :exec
-- Rotation: the old token, once its successor is stored.
UPDATE host_refresh_tokens SET revoked_at = now(), replaced_by = @replaced_by
WHERE id = @id AND revoked_at IS NULL;

-- name: LockHostRefreshTokenByID :one
SELECT * FROM host_refresh_tokens WHERE id = @id FOR UPDATE;

-- name: SpendHostRefreshGrace :exec
-- A revoked token has no grace (left): it was accepted once more, or it is
-- the unused successor that replay replaced; next is its successor now.
UPDATE host_refresh_tokens SET grace_spent_at = now(), replaced_by = @replaced_by
WHERE id = @id AND grace_spent_at IS NULL;

-- name: MarkHostRefreshTokenUsed :exec
-- A heartbeat with the access token access_token_id: the live refresh
-- token issued with it is used, which ends its predecessor's grace.
UPDATE host_refresh_tokens SET used_at = now()
WHERE host_id = @host_id AND access_token_id = @access_token_id AND access_token_id <> ''
  AND revoked_at IS NULL AND used_at IS NULL;

-- name: RevokeHostRefreshFamily :execrows
-- A revoked token was presented again: every token of its family dies.
UPDATE host_refresh_tokens SET revoked_at = now()
WHERE family_id = @family_id AND revoked_at IS NULL;

-- name: RevokeHostRefreshTokens :execrows
-- A new registration of the host: the credentials of the old one die.
UPDATE host_refresh_tokens SET revoked_at = now()
WHERE host_id = @host_id AND revoked_at IS NULL;

-- name: ListHostLiveSandboxes :many
-- What deleting a host affects: its sandboxes that are not stopped.
SELECT * FROM sandboxes WHERE host_id = @host_id AND state <> 'stopped'
ORDER BY created_at, id;

-- name: GetUserIsAdmin :one
-- Whether a user is a platform administrator, read on every call that
-- needs it (never from a token).
SELECT is_admin FROM users WHERE id = @id;
