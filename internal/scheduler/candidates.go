package scheduler

import (
	"encoding/json"

	"github.com/capsulehq/capsule/internal/store/db"
)

// HostTeam is the team whose hosts may take req's sandbox: the team itself
// when it is BYOC, else the platform. It is the team_id of the candidates
// query (db.ListSchedulingCandidatesParams).
func HostTeam(req Request) ID {
	if req.BYOC {
		return req.Team
	}
	return PlatformTeam
}

// Candidates converts the rows of the candidates query
// (Queries.ListSchedulingCandidates, asked with req's template) into
// hosts for Choose. It does no I/O.
func Candidates(rows []db.ListSchedulingCandidatesRow, req Request) []Host {
	hosts := make([]Host, len(rows))
	for i, r := range rows {
		h := Host{ID: r.ID.Bytes, Name: r.Name, Team: r.TeamID.Bytes, Status: r.Status,
			Total:    Resources{VCPUs: int64(r.TotalVCPUs), MemoryMB: r.TotalMemoryMB, DiskMB: r.TotalDiskMB},
			MaxVCPUs: int64(r.MaxVCPUs),
			Reserved: Resources{VCPUs: r.ReservedVCPUs, MemoryMB: r.ReservedMemoryMB, DiskMB: r.ReservedDiskMB},
			Tags:     labels(r.Labels)}
		if r.LastHeartbeatAt.Valid {
			h.LastHeartbeat = r.LastHeartbeatAt.Time
		}
		if r.HasTemplate && req.HasTemplate {
			h.Templates = []ID{req.Template}
		}
		hosts[i] = h
	}
	return hosts
}

// Locked converts the row of Queries.LockHostForPlacement (the chosen host,
// locked, with its current reservations) for the admission re-check:
// s.Admissible(&h, req, now) in the transaction that inserts the sandbox.
// The host's templates are not in it (affinity does not matter any more).
func Locked(r db.LockHostForPlacementRow) Host {
	h := Host{ID: r.ID.Bytes, Name: r.Name, Team: r.TeamID.Bytes, Status: r.Status,
		Total:    Resources{VCPUs: int64(r.TotalVCPUs), MemoryMB: r.TotalMemoryMB, DiskMB: r.TotalDiskMB},
		MaxVCPUs: int64(r.MaxVCPUs),
		Reserved: Resources{VCPUs: r.ReservedVCPUs, MemoryMB: r.ReservedMemoryMB, DiskMB: r.ReservedDiskMB},
		Tags:     labels(r.Labels)}
	if r.LastHeartbeatAt.Valid {
		h.LastHeartbeat = r.LastHeartbeatAt.Time
	}
	return h
}

// labels are a host's tags: the string values of its labels object (other
// values are not tags).
func labels(raw json.RawMessage) map[string]string {
	var m map[string]any
	if len(raw) == 0 || json.Unmarshal(raw, &m) != nil {
		return nil
	}
	tags := make(map[string]string, len(m))
	for k, v := range m {
		if s, ok := v.(string); ok {
			tags[k] = s
		}
	}
	return tags
}
