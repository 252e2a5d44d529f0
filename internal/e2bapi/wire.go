package e2bapi

import (
	"time"

	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
)

// clientID is E2B's deprecated client ID; the SDKs only need it non-empty.
const clientID = "6532622b"

// noDeadline is the endAt of a running sandbox without a timeout (E2B
// requires a time; "never" is the end of time).
var noDeadline = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// sandboxJSON is E2B's Sandbox (create, connect, resume).
type sandboxJSON struct {
	TemplateID         string  `json:"templateID"`
	SandboxID          string  `json:"sandboxID"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	Alias              string  `json:"alias,omitempty"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

// listedSandboxJSON is E2B's ListedSandbox.
type listedSandboxJSON struct {
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	SandboxID   string            `json:"sandboxID"`
	ClientID    string            `json:"clientID"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	CPUCount    int32             `json:"cpuCount"`
	MemoryMB    int32             `json:"memoryMB"`
	DiskSizeMB  int32             `json:"diskSizeMB"`
	Metadata    map[string]string `json:"metadata"`
	State       string            `json:"state"`
	EnvdVersion string            `json:"envdVersion"`
}

// sandboxDetailJSON is E2B's SandboxDetail.
type sandboxDetailJSON struct {
	listedSandboxJSON
	EnvdAccessToken     string        `json:"envdAccessToken"`
	AllowInternetAccess bool          `json:"allowInternetAccess"`
	Domain              *string       `json:"domain"`
	Network             networkJSON   `json:"network"`
	Lifecycle           lifecycleJSON `json:"lifecycle"`
}

type networkJSON struct {
	AllowPublicTraffic bool `json:"allowPublicTraffic"`
	// AllowOut and DenyOut are the egress rules (absent: none).
	AllowOut []string `json:"allowOut,omitempty"`
	DenyOut  []string `json:"denyOut,omitempty"`
}

type lifecycleJSON struct {
	AutoResume bool `json:"autoResume"`
	// OnTimeout is "kill" or "pause".
	OnTimeout string `json:"onTimeout"`
}

// metricJSON is E2B's SandboxMetric.
type metricJSON struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int32     `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// snapshotInfoJSON is E2B's SnapshotInfo.
type snapshotInfoJSON struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

// templateJSON is E2B's Template (GET /templates).
type templateJSON struct {
	TemplateID    string     `json:"templateID"`
	BuildID       string     `json:"buildID"`
	CPUCount      int32      `json:"cpuCount"`
	MemoryMB      int32      `json:"memoryMB"`
	DiskSizeMB    int32      `json:"diskSizeMB"`
	Public        bool       `json:"public"`
	Aliases       []string   `json:"aliases"`
	Names         []string   `json:"names"`
	CreatedAt     time.Time  `json:"createdAt"`
	UpdatedAt     time.Time  `json:"updatedAt"`
	CreatedBy     *string    `json:"createdBy"`
	LastSpawnedAt *time.Time `json:"lastSpawnedAt"`
	SpawnCount    int64      `json:"spawnCount"`
	BuildCount    int32      `json:"buildCount"`
	EnvdVersion   string     `json:"envdVersion"`
	BuildStatus   string     `json:"buildStatus"`
}

// e2bState is how E2B names a sandbox's state: "running" or "paused";
// visible is false for a sandbox E2B would not know (stopped, failed,
// lost).
func e2bState(state string) (e2b string, visible bool) {
	switch state {
	case store.SandboxStarting, store.SandboxRunning, store.SandboxResuming:
		return "running", true
	case store.SandboxPaused, store.SandboxPausing:
		return "paused", true
	}
	return "", false
}

// e2bStates maps E2B's state filter values to the records' states.
var e2bStates = map[string][]string{
	"running": {store.SandboxRunning, store.SandboxResuming},
	"paused":  {store.SandboxPaused, store.SandboxPausing},
}

func (h *Handler) sandboxOf(sb service.Sandbox) sandboxJSON {
	out := sandboxJSON{
		TemplateID: sb.Template, Alias: sb.Template, SandboxID: sb.ID.String(), ClientID: clientID,
		EnvdVersion: envdapi.Version, EnvdAccessToken: sb.EnvdAccessToken, Domain: h.domain,
	}
	if sb.TrafficToken != "" {
		tok := sb.TrafficToken
		out.TrafficAccessToken = &tok
	}
	return out
}

func listedOf(sb service.Sandbox) listedSandboxJSON {
	state, _ := e2bState(string(sb.State))
	out := listedSandboxJSON{
		TemplateID: sb.Template, Alias: sb.Template, SandboxID: sb.ID.String(), ClientID: clientID,
		StartedAt: sb.CreatedAt.UTC(), CPUCount: sb.VCPUs, MemoryMB: sb.MemoryMB, DiskSizeMB: sb.DiskMB,
		State: state, EnvdVersion: envdapi.Version,
	}
	// startedAt is when the sandbox was created (asked for): what list
	// orders by and startedAfter compares, so that a listed startedAt
	// given back as startedAfter includes the sandbox.
	switch {
	case !sb.EndAt.IsZero():
		out.EndAt = sb.EndAt.UTC()
	case state == "paused" && !sb.PausedAt.IsZero():
		// It stopped running then.
		out.EndAt = sb.PausedAt.UTC()
	default:
		out.EndAt = noDeadline
	}
	out.Metadata = sb.Metadata
	return out
}

func (h *Handler) detailOf(sb service.Sandbox) sandboxDetailJSON {
	onTimeout := "kill"
	if sb.AutoPause {
		onTimeout = "pause"
	}
	return sandboxDetailJSON{
		listedSandboxJSON: listedOf(sb), EnvdAccessToken: sb.EnvdAccessToken, AllowInternetAccess: sb.AllowInternetAccess,
		Domain: h.domain, Network: networkOf(sb),
		Lifecycle: lifecycleJSON{AutoResume: sb.AutoResume, OnTimeout: onTimeout},
	}
}

func metricOf(m service.Metric) metricJSON {
	return metricJSON{
		Timestamp: m.Timestamp.UTC(), TimestampUnix: m.Timestamp.Unix(), CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, MemCache: m.MemCache, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
	}
}
