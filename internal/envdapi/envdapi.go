package envdapi

import (
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Version is the envd protocol version envd implements and advertises (in
// X-Envd-Version and to the SDKs through the control plane). 0.6.13 is the
// E2B reference; every SDK 2.51.0 feature gate (≤ 0.6.4) is implemented.
const Version = "0.6.13"

// DefaultPort is the TCP port envd listens on in every sandbox.
const DefaultPort = 49983

// InitRequest is the body of POST /init.
type InitRequest struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    *string           `json:"accessToken,omitempty"`
	Timestamp      *time.Time        `json:"timestamp,omitempty"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
	CABundle       string            `json:"caBundle,omitempty"`
	VolumeMounts   []VolumeMount     `json:"volumeMounts,omitempty"`
	HyperloopIP    string            `json:"hyperloopIP,omitempty"`
	LifecycleID    string            `json:"lifecycleID,omitempty"`

	// Capsule's own, beyond E2B's fields (an E2B envd ignores them):
	// Hostname, when set, becomes the guest's hostname (kernel,
	// /etc/hostname, /etc/hosts); Entropy (base64 in JSON, at most
	// MaxInitEntropyBytes) is mixed into the guest kernel's entropy pool,
	// which is then reseeded, so that guests restored from one snapshot
	// (template clones, forks) do not share their RNG state.
	Hostname string `json:"hostname,omitempty"`
	Entropy  []byte `json:"entropy,omitempty"`
}

// InitEntropyBytes is how much entropy the host sends with each /init;
// MaxInitEntropyBytes is the most envd accepts.
const (
	InitEntropyBytes    = 64
	MaxInitEntropyBytes = 512
)

// VolumeMount is an NFS mount requested by /init.
type VolumeMount struct {
	NFSTarget string `json:"nfs_target"`
	Path      string `json:"path"`
}

// Metrics is the body of GET /metrics.
type Metrics struct {
	Timestamp  int64   `json:"ts"`
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	MemCache   uint64  `json:"mem_cache"`
	MemTotalMi uint64  `json:"mem_total_mib"`
	MemUsedMi  uint64  `json:"mem_used_mib"`
	DiskUsed   uint64  `json:"disk_used"`
	DiskTotal  uint64  `json:"disk_total"`
}

// FileSignature computes the v1 signature of a /files URL: "v1_" + unpadded
// standard base64 of SHA-256("path:operation:username:token[:expiration]").
// operation is "read" or "write".
func FileSignature(path, operation, username, token string, expiration *int64) string {
	in := path + ":" + operation + ":" + username + ":" + token
	if expiration != nil {
		in += ":" + strconv.FormatInt(*expiration, 10)
	}
	sum := sha256.Sum256([]byte(in))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

// SignedFilesQuery returns the query string of a signed /files URL, as the
// SDK builds it (useful to hosts that hand out download links).
func SignedFilesQuery(path, operation, username, token string, expiration *int64) string {
	v := url.Values{}
	if username != "" {
		v.Set("username", username)
	}
	if path != "" {
		v.Set("path", path)
	}
	v.Set("signature", FileSignature(path, operation, username, token, expiration))
	if expiration != nil {
		v.Set("signature_expiration", strconv.FormatInt(*expiration, 10))
	}
	return v.Encode()
}
