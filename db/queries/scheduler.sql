-- name: ListSchedulingCandidates :many
-- The hosts of team_id (the platform team for a regular team, the team
-- itself for a BYOC one) with what the sandboxes recorded on each reserve,
-- and whether the host holds template_id (NULL: no template to look for),
-- in one round trip. Reserving states and amounts are those of
-- scheduler.Reservation: starting, running, pausing, resuming and missing
-- reserve vCPUs, memory and disk; paused its disk and its saved memory (on
-- disk); error its disk. Sums are computed for online hosts only (the
-- scheduler takes no other); the others come back with zeros, for the
-- scheduler's explanation of a refusal. Served by hosts_team_idx, the
-- partial covering index sandboxes_host_reservation_idx (index-only) and
-- host_templates' primary key. The sums are of integer columns (bigint
-- results, not numeric: 2–3× cheaper).
SELECT h.id, h.name, h.team_id, h.status, h.last_heartbeat_at,
       h.total_vcpus, h.max_vcpus, h.total_memory_mb, h.total_disk_mb, h.labels,
       r.reserved_vcpus, r.reserved_memory_mb, r.reserved_disk_mb,
       EXISTS (SELECT 1 FROM host_templates ht
               WHERE ht.host_id = h.id AND ht.template_id = sqlc.narg('template_id')::uuid) AS has_template
FROM hosts h
CROSS JOIN LATERAL (
  SELECT
    COALESCE(sum(s.vcpus) FILTER (WHERE s.state IN ('starting', 'running', 'pausing', 'resuming', 'missing')), 0)::bigint
      AS reserved_vcpus,
    COALESCE(sum(s.memory_mb) FILTER (WHERE s.state IN ('starting', 'running', 'pausing', 'resuming', 'missing')), 0)::bigint
      AS reserved_memory_mb,
    COALESCE(sum(s.disk_mb + CASE WHEN s.state = 'paused' THEN s.memory_mb ELSE 0 END), 0)::bigint
      AS reserved_disk_mb
  FROM sandboxes s
  WHERE s.host_id = h.id AND h.status = 'online'
    AND s.state IN ('starting', 'running', 'pausing', 'resuming', 'missing', 'paused', 'error')
) r
WHERE h.team_id = @team_id
ORDER BY h.name, h.id;

-- name: UpsertHostTemplate :exec
-- A host holds (or just used) a template's files.
INSERT INTO host_templates (host_id, template_id, size_bytes, last_used_at)
VALUES (@host_id, @template_id, @size_bytes, now())
ON CONFLICT (host_id, template_id) DO UPDATE SET
  size_bytes = EXCLUDED.size_bytes, last_used_at = now();

-- name: ListHostTemplatesLRU :many
-- A host's templates, least recently used first (eviction order).
SELECT * FROM host_templates WHERE host_id = @host_id ORDER BY last_used_at, template_id;

-- name: ListTemplateHosts :many
-- The hosts that hold a template.
SELECT host_id FROM host_templates WHERE template_id = @template_id ORDER BY host_id;

-- name: DeleteHostTemplate :execrows
-- A host no longer holds a template (evicted or deleted).
DELETE FROM host_templates WHERE host_id = @host_id AND template_id = @template_id;

-- name: LockHostForPlacement :one
-- The chosen host with what its sandboxes reserve, its row locked until
-- the end of the transaction that inserts the sandbox: creates that chose
-- the same host re-check admission (scheduler.Fits) one after the other,
-- so two of them never overcommit it together. Sums as in
-- ListSchedulingCandidates.
SELECT h.id, h.name, h.team_id, h.status, h.last_heartbeat_at,
       h.total_vcpus, h.max_vcpus, h.total_memory_mb, h.total_disk_mb, h.labels,
       r.reserved_vcpus, r.reserved_memory_mb, r.reserved_disk_mb
FROM hosts h
CROSS JOIN LATERAL (
  SELECT
    COALESCE(sum(s.vcpus) FILTER (WHERE s.state IN ('starting', 'running', 'pausing', 'resuming', 'missing')), 0)::bigint
      AS reserved_vcpus,
    COALESCE(sum(s.memory_mb) FILTER (WHERE s.state IN ('starting', 'running', 'pausing', 'resuming', 'missing')), 0)::bigint
      AS reserved_memory_mb,
    COALESCE(sum(s.disk_mb + CASE WHEN s.state = 'paused' THEN s.memory_mb ELSE 0 END), 0)::bigint
      AS reserved_disk_mb
  FROM sandboxes s
  WHERE s.host_id = h.id
    AND s.state IN ('starting', 'running', 'pausing', 'resuming', 'missing', 'paused', 'error')
) r
WHERE h.id = @id
FOR UPDATE OF h;
