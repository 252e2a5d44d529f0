-- Issue 11 (parts 1-3): hosts created by an administrator, registered by
-- their agent with a one-time token, kept alive by heartbeats, and the
-- platform's internal certificate authority.
--
--   * hosts.address is the address the administrator declared (HOST:PORT):
--     the control plane dials it and the host's certificate names it;
--     registration never changes it (claimed_address keeps what the agent
--     said of itself, for the administrator's eyes only).
--   * The registration token: its SHA-256 (registration_token_hash, from
--     00001), when it was issued, when it expires and when it was used; a
--     used token keeps its hash so that a second use is told apart (409)
--     from an unknown token (401).
--   * tags: free labels chosen by the administrator.
--   * used_* and the sandbox counts: the last heartbeat's report.
--   * cert_serial, cert_expires_at: the server certificate last issued to
--     the host by the internal CA.
--   * host_refresh_tokens.family_id: every token rotated from one
--     registration shares it; presenting a revoked token revokes the family.
--   * internal_ca: the one CA of the platform (a single row, id = 1), its
--     private key sealed (AES-256-GCM under a key derived from the server
--     secret, auth.FieldCipher); replicas that start together race on the
--     primary key and all keep the row that won.

-- +goose Up
ALTER TABLE hosts
  ADD COLUMN tags                          text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 32),
  ADD COLUMN claimed_address               text        NOT NULL DEFAULT '',
  ADD COLUMN registration_token_issued_at  timestamptz,
  ADD COLUMN registration_token_expires_at timestamptz,
  ADD COLUMN registration_token_used_at    timestamptz,
  ADD COLUMN registered_at                 timestamptz,
  ADD COLUMN used_vcpus                    integer     NOT NULL DEFAULT 0 CHECK (used_vcpus >= 0),
  ADD COLUMN used_memory_mb                bigint      NOT NULL DEFAULT 0 CHECK (used_memory_mb >= 0),
  ADD COLUMN used_disk_mb                  bigint      NOT NULL DEFAULT 0 CHECK (used_disk_mb >= 0),
  ADD COLUMN running_sandboxes             integer     NOT NULL DEFAULT 0 CHECK (running_sandboxes >= 0),
  ADD COLUMN paused_sandboxes              integer     NOT NULL DEFAULT 0 CHECK (paused_sandboxes >= 0),
  ADD COLUMN sandbox_count                 integer     NOT NULL DEFAULT 0 CHECK (sandbox_count >= 0),
  ADD COLUMN cert_serial                   text        NOT NULL DEFAULT '',
  ADD COLUMN cert_expires_at               timestamptz,
  ADD COLUMN created_by                    uuid        REFERENCES users (id) ON DELETE SET NULL;

ALTER TABLE host_refresh_tokens ADD COLUMN family_id uuid;
UPDATE host_refresh_tokens SET family_id = id;
ALTER TABLE host_refresh_tokens ALTER COLUMN family_id SET NOT NULL;
CREATE INDEX host_refresh_tokens_family_idx ON host_refresh_tokens (family_id) WHERE revoked_at IS NULL;

CREATE TABLE internal_ca (
  id         integer     PRIMARY KEY CHECK (id = 1),
  cert_pem   text        NOT NULL CHECK (cert_pem <> ''),
  key_sealed bytea       NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE IF EXISTS internal_ca;
DROP INDEX IF EXISTS host_refresh_tokens_family_idx;
ALTER TABLE host_refresh_tokens DROP COLUMN IF EXISTS family_id;
ALTER TABLE hosts
  DROP COLUMN IF EXISTS created_by,
  DROP COLUMN IF EXISTS cert_expires_at,
  DROP COLUMN IF EXISTS cert_serial,
  DROP COLUMN IF EXISTS sandbox_count,
  DROP COLUMN IF EXISTS paused_sandboxes,
  DROP COLUMN IF EXISTS running_sandboxes,
  DROP COLUMN IF EXISTS used_disk_mb,
  DROP COLUMN IF EXISTS used_memory_mb,
  DROP COLUMN IF EXISTS used_vcpus,
  DROP COLUMN IF EXISTS registered_at,
  DROP COLUMN IF EXISTS registration_token_used_at,
  DROP COLUMN IF EXISTS registration_token_expires_at,
  DROP COLUMN IF EXISTS registration_token_issued_at,
  DROP COLUMN IF EXISTS claimed_address,
  DROP COLUMN IF EXISTS tags;
