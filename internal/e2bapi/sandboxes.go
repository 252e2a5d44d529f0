package e2bapi

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// Timeout defaults of the create paths (spec §4.3).
const (
	defaultTimeoutV2 = 300
	defaultTimeoutV1 = 15
	// defaultConnectTimeout is ConnectSandboxV2's; defaultResumeTimeout
	// ResumedSandbox's.
	defaultConnectTimeout = 300
	defaultResumeTimeout  = 15
	maxRefreshSec         = 3600
	maxListLimit          = 100
)

// newSandboxJSON is NewSandboxV2 (and NewSandbox, with secure).
type newSandboxJSON struct {
	TemplateID          *string           `json:"templateID"`
	Timeout             *int32            `json:"timeout"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	AutoPause           *bool             `json:"autoPause"`
	AutoPauseMemory     *bool             `json:"autoPauseMemory"`
	AutoResume          *struct {
		Enabled bool `json:"enabled"`
	} `json:"autoResume"`
	Network *struct {
		AllowPublicTraffic *bool `json:"allowPublicTraffic"`
		egressJSON
	} `json:"network"`
	MCP          json.RawMessage `json:"mcp"`
	VolumeMounts json.RawMessage `json:"volumeMounts"`
	// Secure (v1) asks for an envd access token: every sandbox has one.
	Secure *bool `json:"secure"`
}

// isSet reports whether an optional JSON value was given as something
// other than null or an empty object/array.
func isSet(raw json.RawMessage) bool {
	switch strings.TrimSpace(string(raw)) {
	case "", "null", "{}", "[]":
		return false
	}
	return true
}

// templateName strips E2B's ":default" from a template reference; other
// tags are resolved before (create: Sandboxes.ResolveTemplateTag) and name
// nothing here (404).
func templateName(ref string) (string, error) {
	name, tag, ok := strings.Cut(ref, ":")
	if ok && tag != "default" {
		return "", &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(ref) + " not found: only the tag \"default\" exists"}
	}
	return name, nil
}

// createRequest turns a create body into the service's request.
func createRequest(req newSandboxJSON, defaultTimeout int32) (service.CreateSandbox, error) {
	if req.TemplateID == nil || *req.TemplateID == "" {
		return service.CreateSandbox{}, invalid("templateID: required")
	}
	name, err := templateName(*req.TemplateID)
	if err != nil {
		return service.CreateSandbox{}, err
	}
	timeout := defaultTimeout
	if req.Timeout != nil {
		if timeout = *req.Timeout; timeout <= 0 {
			return service.CreateSandbox{}, invalid("timeout: must be positive (seconds)")
		}
	}
	if isSet(req.MCP) {
		return service.CreateSandbox{}, invalid("mcp: MCP gateways are not supported by this server")
	}
	if isSet(req.VolumeMounts) {
		return service.CreateSandbox{}, invalid("volumeMounts: volumes are not supported by this server")
	}
	autoPause := req.AutoPause != nil && *req.AutoPause
	autoResume := req.AutoResume != nil && req.AutoResume.Enabled
	withoutMemory := req.AutoPauseMemory != nil && !*req.AutoPauseMemory
	if withoutMemory {
		// Stored: the timeout's pause then keeps the disk only.
		switch {
		case !autoPause:
			return service.CreateSandbox{}, invalid("autoPauseMemory: false needs autoPause")
		case autoResume:
			return service.CreateSandbox{}, invalid("autoPauseMemory: false cannot be combined with autoResume")
		}
	}
	out := service.CreateSandbox{
		Template: name, TimeoutSec: timeout, EnvVars: req.EnvVars, Metadata: req.Metadata,
		Internet: req.AllowInternetAccess, AutoPause: &autoPause, AutoResume: autoResume, PublicTraffic: true,
		PauseWithoutMemory: withoutMemory,
	}
	if n := req.Network; n != nil {
		if n.AllowPublicTraffic != nil {
			out.PublicTraffic = *n.AllowPublicTraffic
		}
		rules, err := n.rules(out.Internet)
		if err != nil {
			return service.CreateSandbox{}, err
		}
		if len(rules.AllowOut) > 0 || len(rules.DenyOut) > 0 {
			out.Network = &rules
		}
	}
	return out, nil
}

func (h *Handler) createV2(w http.ResponseWriter, r *http.Request, p service.Principal) {
	h.create(w, r, p, defaultTimeoutV2)
}

func (h *Handler) createV1(w http.ResponseWriter, r *http.Request, p service.Principal) {
	h.create(w, r, p, defaultTimeoutV1)
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request, p service.Principal, defaultTimeout int32) {
	start := time.Now()
	var body newSandboxJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	// localName is the team's own name of ref, or an error (not found
	// when ref names nothing of the team's).
	localName := func(ref string) (string, error) {
		name, ok, err := h.localName(r, p, ref)
		if err == nil && !ok {
			err = &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(*body.TemplateID) + " not found"}
		}
		return name, err
	}
	if body.TemplateID != nil {
		// A tagged version ("[<slug>/]name:tag"): the template row its tag names.
		if base, tag, ok := strings.Cut(*body.TemplateID, ":"); ok && tag != defaultTag {
			name, err := localName(base)
			if err == nil {
				name, err = h.cfg.Sandboxes.ResolveTemplateTag(r.Context(), p, name, tag)
			}
			if err != nil {
				h.fail(w, r, err)
				return
			}
			body.TemplateID = &name
		}
	}
	if body.TemplateID != nil && strings.Contains(*body.TemplateID, "/") {
		// A namespaced name ("<slug>/name:default", a snapshotID).
		name, err := localName(*body.TemplateID)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		body.TemplateID = &name
	}
	req, err := createRequest(body, defaultTimeout)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	// Create answers once envd runs and has applied /init (token, env,
	// default user): the SDK calls envd right away.
	sb, err := h.cfg.Sandboxes.Create(r.Context(), p, req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Server-Timing", service.ServerTiming(sb.Phases, time.Since(start)))
	writeJSON(w, http.StatusCreated, h.sandboxOf(sb))
}

// visible returns a sandbox of p's team that E2B would know (not stopped,
// failed or lost: those are 404).
func (h *Handler) visible(r *http.Request, p service.Principal) (service.SandboxID, service.Sandbox, error) {
	id, err := sandboxID(r)
	if err != nil {
		return id, service.Sandbox{}, err
	}
	sb, err := h.cfg.Sandboxes.Get(r.Context(), p, id)
	if err != nil {
		return id, service.Sandbox{}, err
	}
	if _, ok := e2bState(string(sb.State)); !ok {
		return id, service.Sandbox{}, errSandboxNotFound
	}
	return id, sb, nil
}

func (h *Handler) getSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	_, sb, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.detailOf(sb))
}

type connectJSON struct {
	Timeout *int32 `json:"timeout"`
	// Memory false (the SDK's onResume: 'reboot') boots a paused sandbox
	// cold from its disk, dropping its memory; a running one is left as
	// it is.
	Memory *bool `json:"memory"`
}

func (h *Handler) connectV2(w http.ResponseWriter, r *http.Request, p service.Principal) {
	h.connect(w, r, p, false)
}

func (h *Handler) connectV1(w http.ResponseWriter, r *http.Request, p service.Principal) {
	h.connect(w, r, p, true)
}

// connect: a running sandbox is 200 and its deadline only moves later; a
// paused one is resumed, 201.
func (h *Handler) connect(w http.ResponseWriter, r *http.Request, p service.Principal, timeoutRequired bool) {
	id, err := sandboxID(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body connectJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	timeout := int32(defaultConnectTimeout)
	switch {
	case body.Timeout != nil:
		timeout = *body.Timeout
	case timeoutRequired:
		h.fail(w, r, invalid("timeout: required (seconds)"))
		return
	}
	if timeout < 0 {
		h.fail(w, r, invalid("timeout: must not be negative"))
		return
	}
	cold := service.ResumeOptions{Cold: body.Memory != nil && !*body.Memory}
	sb, resumed, err := h.cfg.Sandboxes.ConnectWith(r.Context(), p, id, timeout, cold)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if resumed {
		status = http.StatusCreated
	}
	writeJSON(w, status, h.sandboxOf(sb))
}

// listV2: ?state=running,paused&metadata=…&order=&startedAfter=&template=
// &limit=&nextToken=, the next page's cursor in X-Next-Token (only when
// there is one).
func (h *Handler) listV2(w http.ResponseWriter, r *http.Request, p service.Principal) {
	q := r.URL.Query()
	f := service.ListFilter{Cursor: q.Get("nextToken"), Limit: maxListLimit}
	var err error
	if f.States, err = stateFilter(q); err != nil {
		h.fail(w, r, err)
		return
	}
	if f.Metadata, err = metadataFilter(q); err != nil {
		h.fail(w, r, err)
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			h.fail(w, r, invalid("limit: 1 to %d", maxListLimit))
			return
		}
		f.Limit = n
	}
	if err := listOptions(q, &f); err != nil {
		h.fail(w, r, err)
		return
	}
	if v := q.Get("template"); v != "" {
		name, ok, err := h.localName(r, p, v)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if !ok { // names no template of the team: no sandbox of it
			writeJSON(w, http.StatusOK, []listedSandboxJSON{})
			return
		}
		f.Template = name
	}
	items, next, err := h.cfg.Sandboxes.List(r.Context(), p, f)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]listedSandboxJSON, len(items))
	for i, it := range items {
		out[i] = listedOf(it)
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	writeJSON(w, http.StatusOK, out)
}

// listOptions reads a listing's order (asc or desc, newest first by
// default) and startedAfter (RFC 3339, offsets and fractions allowed).
func listOptions(q url.Values, f *service.ListFilter) error {
	switch q.Get("order") {
	case "", "desc":
	case "asc":
		f.Ascending = true
	default:
		return invalid("order: asc or desc")
	}
	if v := q.Get("startedAfter"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return invalid("startedAfter: an RFC 3339 time (2006-01-02T15:04:05.999Z07:00)")
		}
		f.StartedAfter = t
	}
	return nil
}

// listV1 is the deprecated listing: every running sandbox, no paging.
func (h *Handler) listV1(w http.ResponseWriter, r *http.Request, p service.Principal) {
	md, err := metadataFilter(r.URL.Query())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	f := service.ListFilter{States: e2bStates["running"], Metadata: md, Limit: maxListLimit}
	out := []listedSandboxJSON{}
	for {
		items, next, err := h.cfg.Sandboxes.List(r.Context(), p, f)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for _, it := range items {
			out = append(out, listedOf(it))
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	writeJSON(w, http.StatusOK, out)
}

// stateFilter reads E2B's state filter: comma-separated and/or repeated
// values of running and paused (none: both).
func stateFilter(q url.Values) ([]string, error) {
	var states []string
	seen := map[string]bool{}
	for _, v := range q["state"] {
		for s := range strings.SplitSeq(v, ",") {
			s = strings.TrimSpace(s)
			mapped, ok := e2bStates[s]
			if !ok {
				return nil, invalid("state: %q is not running or paused", s)
			}
			if !seen[s] {
				seen[s] = true
				states = append(states, mapped...)
			}
		}
	}
	if states == nil {
		states = append(append(states, e2bStates["running"]...), e2bStates["paused"]...)
	}
	return states, nil
}

// metadataFilter decodes E2B's metadata filter (spec §4.5): the query
// value (already decoded once by the URL parser) is percent-decoded once
// more, split on '&' into pairs of exactly one '=', and each key and value
// percent-decoded again. Repeated metadata parameters add pairs.
func metadataFilter(q url.Values) (map[string]string, error) {
	var out map[string]string
	for _, raw := range q["metadata"] {
		form, err := url.QueryUnescape(raw)
		if err != nil {
			return nil, invalid("metadata: malformed encoding")
		}
		for pair := range strings.SplitSeq(form, "&") {
			if pair == "" {
				continue
			}
			if strings.Count(pair, "=") != 1 {
				return nil, invalid("metadata: want key=value pairs")
			}
			k, v, _ := strings.Cut(pair, "=")
			key, kerr := url.QueryUnescape(k)
			val, verr := url.QueryUnescape(v)
			if kerr != nil || verr != nil || key == "" {
				return nil, invalid("metadata: malformed key or value")
			}
			if out == nil {
				out = map[string]string{}
			}
			out[key] = val
		}
	}
	return out, nil
}

func (h *Handler) kill(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sb, err := h.cfg.Sandboxes.Get(r.Context(), p, id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	// Killed already: 404 (the SDK's kill() then returns false). A failed
	// or lost one is destroyed, whatever is left of it.
	if sb.State == service.StateStopped {
		h.fail(w, r, errSandboxNotFound)
		return
	}
	if err := h.cfg.Sandboxes.Destroy(r.Context(), p, id); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type timeoutJSON struct {
	Timeout *int32 `json:"timeout"`
}

// setTimeout: the sandbox ends timeout seconds from now (earlier or later
// than it would have).
func (h *Handler) setTimeout(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, _, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body timeoutJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	if body.Timeout == nil || *body.Timeout <= 0 {
		h.fail(w, r, invalid("timeout: required, a positive number of seconds"))
		return
	}
	if _, err := h.cfg.Sandboxes.SetTimeout(r.Context(), p, id, *body.Timeout); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type pauseJSON struct {
	// Memory false asks for a filesystem-only pause: the disk is kept,
	// the machine stopped, and the resume boots cold.
	Memory *bool `json:"memory"`
}

// pause: 204, 409 when paused already (the SDK's pause() returns false).
func (h *Handler) pause(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, sb, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body pauseJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	if state, _ := e2bState(string(sb.State)); state == "paused" {
		h.fail(w, r, &service.Error{Kind: service.ErrConflict, Msg: "the sandbox is already paused"})
		return
	}
	opts := service.PauseOptions{FilesystemOnly: body.Memory != nil && !*body.Memory}
	if _, err := h.cfg.Sandboxes.PauseWith(r.Context(), p, id, opts); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type resumeJSON struct {
	Timeout *int32 `json:"timeout"`
	// Memory false boots cold from the disk.
	Memory *bool `json:"memory"`
}

// resume (deprecated; the SDKs connect): 201, 409 unless paused.
func (h *Handler) resume(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, sb, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body resumeJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	timeout := int32(defaultResumeTimeout)
	if body.Timeout != nil {
		if timeout = *body.Timeout; timeout < 0 {
			h.fail(w, r, invalid("timeout: must not be negative"))
			return
		}
	}
	if sb.State != service.StatePaused {
		h.fail(w, r, &service.Error{Kind: service.ErrConflict, Msg: "the sandbox is " + string(sb.State) + ", not paused"})
		return
	}
	cold := service.ResumeOptions{Cold: body.Memory != nil && !*body.Memory}
	sb, resumed, err := h.cfg.Sandboxes.ConnectWith(r.Context(), p, id, timeout, cold)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !resumed {
		// Someone else resumed it between the read and the call.
		h.fail(w, r, &service.Error{Kind: service.ErrConflict, Msg: "the sandbox is already running"})
		return
	}
	writeJSON(w, http.StatusCreated, h.sandboxOf(sb))
}

type refreshJSON struct {
	Duration *int32 `json:"duration"`
}

// refresh keeps a running sandbox alive for duration more seconds (0..3600;
// absent: its own timeout).
func (h *Handler) refresh(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body refreshJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	var sec int32
	if body.Duration != nil {
		if sec = *body.Duration; sec < 0 || sec > maxRefreshSec {
			h.fail(w, r, invalid("duration: 0 to %d seconds", maxRefreshSec))
			return
		}
	}
	if _, err := h.cfg.Sandboxes.Refresh(r.Context(), p, id, sec); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
