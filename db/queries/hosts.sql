-- name: RegisterHost :one
-- An agent announcing itself (on every start): creates the host or updates
-- the one of that name, and marks it online (a draining host stays
-- draining). A name taken by another team's host: no row (store.ErrNotFound).
INSERT INTO hosts (team_id, name, address, status, version, arch, total_vcpus, total_memory_mb,
                   total_disk_mb, labels, last_heartbeat_at)
VALUES (@team_id, @name, @address, 'online', @version, @arch, @total_vcpus, @total_memory_mb,
        @total_disk_mb, @labels, now())
ON CONFLICT (name) DO UPDATE SET
  address           = EXCLUDED.address,
  status            = CASE WHEN hosts.status = 'draining' THEN 'draining' ELSE 'online' END,
  version           = EXCLUDED.version,
  arch              = EXCLUDED.arch,
  total_vcpus       = EXCLUDED.total_vcpus,
  total_memory_mb   = EXCLUDED.total_memory_mb,
  total_disk_mb     = EXCLUDED.total_disk_mb,
  labels            = EXCLUDED.labels,
  last_heartbeat_at = now()
WHERE hosts.team_id = EXCLUDED.team_id
RETURNING *;

-- name: GetHost :one
SELECT * FROM hosts WHERE id = @id;

-- name: HeartbeatHost :one
-- An unreachable or offline host that beats again is online; draining stays.
UPDATE hosts SET
  last_heartbeat_at = now(),
  status = CASE WHEN status = 'draining' THEN 'draining' ELSE 'online' END
WHERE id = @id
RETURNING *;

-- name: ListActiveHosts :many
-- Hosts that may take new sandboxes: online with a heartbeat in the last
-- stale_seconds.
SELECT * FROM hosts
WHERE status = 'online'
  AND last_heartbeat_at > now() - make_interval(secs => @stale_seconds::double precision)
ORDER BY name, id;

-- name: MarkStaleHostsUnreachable :many
-- Online hosts without a heartbeat in the last stale_seconds become unreachable.
UPDATE hosts SET status = 'unreachable'
WHERE status = 'online'
  AND (last_heartbeat_at IS NULL
       OR last_heartbeat_at <= now() - make_interval(secs => @stale_seconds::double precision))
RETURNING *;
