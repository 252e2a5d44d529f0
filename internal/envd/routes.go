package envd

import (
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/envdapi"
)

// writeJSONError writes envd's REST error shape {"code":status,"message":msg}.
func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody(status, msg))
}

// errorBody is envd's REST error shape.
func errorBody(status int, msg string) map[string]any {
	return map[string]any{"code": status, "message": msg}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleEnvs(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.environ())
}

// InitRequest is the body of POST /init; its wire shape is envdapi's.
type InitRequest = envdapi.InitRequest

// VolumeMount is an NFS mount requested by /init.
type VolumeMount = envdapi.VolumeMount

// handleInit applies POST /init. A request whose timestamp is not newer than
// the last applied one changes nothing; one without a timestamp always
// applies. Once a token is set, only a caller presenting it in
// X-Access-Token may init again: anyone else (a missing header as much as
// a wrong one) gets 401 and changes nothing, so whoever reaches the
// guest's port cannot take over its token, environment, user or clock.
// The host presents the token it set (a restore presents the one the
// saved envd holds, see sandbox.Template.EnvdToken) to hand over a new one.
func (s *Server) handleInit(w http.ResponseWriter, r *http.Request) {
	// Refused before the body is even read; checked again under the lock
	// below, since a concurrent /init may replace the token meanwhile.
	if !s.initAllowed(r) {
		writeJSONError(w, http.StatusUnauthorized, msgUnauthorized)
		return
	}
	var req InitRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "cannot read request body")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeJSONError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
			return
		}
	}
	if len(req.Entropy) > envdapi.MaxInitEntropyBytes {
		writeJSONError(w, http.StatusBadRequest, "entropy: at most "+strconv.Itoa(envdapi.MaxInitEntropyBytes)+" bytes")
		return
	}
	if req.DefaultUser != "" {
		if _, err := lookupAccount(req.DefaultUser); err != nil {
			writeJSONError(w, http.StatusBadRequest, "unknown defaultUser '"+req.DefaultUser+"'")
			return
		}
	}

	s.mu.Lock()
	if !s.initAllowedLocked(r) {
		s.mu.Unlock()
		writeJSONError(w, http.StatusUnauthorized, msgUnauthorized)
		return
	}
	if req.Timestamp != nil && !s.lastInit.IsZero() && !req.Timestamp.After(s.lastInit) {
		s.mu.Unlock()
		s.initDone(w)
		return
	}
	if req.Timestamp != nil {
		s.lastInit = *req.Timestamp
	}
	s.envVars = map[string]string{}
	for k, v := range req.EnvVars {
		s.envVars[k] = v
	}
	s.accessToken = ""
	if req.AccessToken != nil {
		s.accessToken = *req.AccessToken
	}
	if req.DefaultUser != "" {
		s.defaultUser = req.DefaultUser
	}
	if req.DefaultWorkdir != "" {
		s.defaultWorkdir = req.DefaultWorkdir
	}
	// A sandbox restored from a snapshot template inherits the identity
	// of the sandbox the snapshot was taken of: the control plane's
	// E2B_SANDBOX_ID / E2B_TEMPLATE_ID replace it, in the run files too.
	renamed := false
	for _, k := range []string{"E2B_SANDBOX_ID", "E2B_TEMPLATE_ID"} {
		if v, ok := req.EnvVars[k]; ok && v != "" && v != s.sysEnv[k] {
			s.sysEnv[k], renamed = v, true
		}
	}
	sysEnv := maps.Clone(s.sysEnv)
	s.mu.Unlock()
	if renamed && s.cfg.RunDir != "" {
		if err := writeRunFiles(s.cfg.RunDir, sysEnv); err != nil {
			s.log.ErrorContext(r.Context(), "rewrite the sandbox's run files", "err", err)
		}
	}

	if s.cfg.Guest {
		if req.Timestamp != nil {
			s.syncClock(*req.Timestamp)
		}
		if req.CABundle != "" {
			if err := s.installCABundle(req.CABundle); err != nil {
				s.log.ErrorContext(r.Context(), "install CA bundle", "err", err)
			}
		}
		if err := reseedRNG(req.Entropy); err != nil {
			s.log.ErrorContext(r.Context(), "reseed the kernel RNG", "err", err)
		}
		if req.Hostname != "" {
			if err := setHostname(req.Hostname); err != nil {
				s.log.ErrorContext(r.Context(), "set the hostname", "err", err)
			}
		}
	}
	s.initDone(w)
}

// initAllowed reports whether r may apply /init: no token is set yet, or
// r presents the current one.
func (s *Server) initAllowed(r *http.Request) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.initAllowedLocked(r)
}

func (s *Server) initAllowedLocked(r *http.Request) bool {
	return s.accessToken == "" || equalSecret(r.Header.Get("X-Access-Token"), s.accessToken)
}

func (s *Server) initDone(w http.ResponseWriter) {
	w.Header().Set("X-Envd-Version", Version)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// syncClock sets the guest clock when it lags the host's timestamp by more
// than 50 ms or leads it by more than 5 s (a resumed snapshot wakes up in
// the past).
func (s *Server) syncClock(ts time.Time) {
	d := ts.Sub(s.now())
	if d <= 50*time.Millisecond && d >= -5*time.Second {
		return
	}
	tv := unix.NsecToTimeval(ts.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		s.log.Error("set clock", "err", err)
	}
}

// installCABundle writes the PEM bundle where update-ca-certificates looks
// and appends it to the system bundle so that it takes effect at once.
func (s *Server) installCABundle(pem string) error {
	dir := s.cfg.CABundleDir
	if dir == "" {
		dir = "/usr/local/share/ca-certificates"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "capsule-init.crt"), []byte(pem), 0o644); err != nil {
		return err
	}
	const system = "/etc/ssl/certs/ca-certificates.crt"
	f, err := os.OpenFile(system, os.O_APPEND|os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString("\n" + pem + "\n")
	return err
}

// Metrics is the body of GET /metrics; its wire shape is envdapi's.
type Metrics = envdapi.Metrics

func (s *Server) handleMetrics(w http.ResponseWriter, _ *http.Request) {
	m, err := s.collectMetrics()
	if err != nil {
		s.log.Error("collect metrics", "err", err)
		writeJSONError(w, http.StatusInternalServerError, "cannot collect metrics")
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// parseUint is strconv.ParseUint for the /proc readers.
func parseUint(s string) uint64 {
	n, _ := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	return n
}
