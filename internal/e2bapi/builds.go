package e2bapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/recipe"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// E2B's template builds (spec e2b-compat-2 §1) over package builds: POST
// /v3/templates prepares a build (waiting), each COPY's files are checked
// by hash and uploaded to a self-authorising URL, POST
// /v2/templates/{templateID}/builds/{buildID} turns the step list into a
// recipe (internal/recipe) and queues it, and the SDK polls the status
// with logsOffset. The template ID is the template's name.

const (
	// purposeUpload derives the key of the upload URLs' signatures.
	purposeUpload = "e2b/template-upload"
	uploadTTL     = time.Hour
	// maxStatusEntries caps the log entries of one status answer (infra's).
	maxStatusEntries = 100
	// e2bBaseImage is E2B's default base image, mapped to our "base".
	e2bBaseImage = "e2bdev/base"
)

var filesHashRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

type createTemplateJSON struct {
	Name     string   `json:"name"`
	Alias    string   `json:"alias"`
	Tags     []string `json:"tags"`
	CPUCount int32    `json:"cpuCount"`
	MemoryMB int32    `json:"memoryMB"`
}

// buildTemplateName is the template name and tags of a build: "name" or
// "name:tag", plus the request's tags (none: "default"); a bad name or tag
// is 400.
func buildTemplateName(ref string, extra []string) (string, []string, error) {
	name, tag, ok := strings.Cut(ref, ":")
	if err := builds.ValidateTemplateName(name); err != nil {
		return "", nil, err
	}
	var tags []string
	if ok {
		if tag == "" {
			return "", nil, invalid("name: %q has an empty tag", ref)
		}
		tags = append(tags, tag)
	}
	tags, err := service.NormalizeTags(append(tags, extra...))
	if err != nil {
		return "", nil, err
	}
	return name, tags, nil
}

// createTemplateV3: a waiting build of a template (202), of the tags of
// its name ("name:tag") and its tags field.
func (h *Handler) createTemplateV3(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req createTemplateJSON
	if _, err := decode(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	ref := req.Name
	if ref == "" {
		ref = req.Alias
	}
	name, tags, err := buildTemplateName(ref, req.Tags)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	b, err := h.cfg.Builds.Prepare(r.Context(), p, builds.Submit{Template: name, VCPUs: req.CPUCount, MemoryMB: req.MemoryMB,
		Metadata: map[string]any{builds.MetaTags: tags}})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"templateID": name, "buildID": builds.ID(b.ID), "tags": tags,
		"names": []string{name}, "aliases": []string{name}, "public": false})
}

// uploadSignature signs an upload URL's team, hash and expiry.
func (h *Handler) uploadSignature(team, hash string, expires int64) string {
	key, _ := auth.DeriveKey(h.cfg.Secret, purposeUpload, 32)
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s\n%s\n%d", team, hash, expires)
	return hex.EncodeToString(m.Sum(nil))
}

// templateFile: whether the team has the files of a COPY (by E2B's hash),
// else a self-authorising URL to PUT them to (201 either way).
func (h *Handler) templateFile(w http.ResponseWriter, r *http.Request, p service.Principal) {
	hash := r.PathValue("hash")
	if !filesHashRe.MatchString(hash) {
		h.fail(w, r, invalid("hash: 64 lowercase hex digits"))
		return
	}
	if _, ok, err := h.cfg.Builds.FindArchive(r.Context(), p, hash); err != nil {
		h.fail(w, r, err)
		return
	} else if ok {
		writeJSON(w, http.StatusCreated, map[string]any{"present": true})
		return
	}
	team := p.TeamID.String()
	expires := time.Now().Add(uploadTTL).Unix()
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	u := url.URL{Scheme: scheme, Host: r.Host, Path: "/templates/" + url.PathEscape(r.PathValue("templateID")) + "/files/" + hash + "/upload"}
	q := url.Values{"team": {team}, "expires": {strconv.FormatInt(expires, 10)}, "token": {h.uploadSignature(team, hash, expires)}}
	u.RawQuery = q.Encode()
	writeJSON(w, http.StatusCreated, map[string]any{"present": false, "url": u.String()})
}

// uploadTemplateFile: the PUT of a COPY's tar (gzipped or not) to the URL
// templateFile signed; no API key (the signature is the authorisation).
func (h *Handler) uploadTemplateFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	hash, team := r.PathValue("hash"), q.Get("team")
	expires, err := strconv.ParseInt(q.Get("expires"), 10, 64)
	sig, _ := hex.DecodeString(q.Get("token"))
	want, _ := hex.DecodeString(h.uploadSignature(team, hash, expires))
	if err != nil || !filesHashRe.MatchString(hash) || !hmac.Equal(sig, want) {
		writeError(w, http.StatusForbidden, "invalid upload URL")
		return
	}
	if time.Now().Unix() > expires {
		writeError(w, http.StatusForbidden, "the upload URL has expired")
		return
	}
	teamID, err := wireid.ParseTeamID(team)
	if err != nil {
		writeError(w, http.StatusForbidden, "invalid upload URL")
		return
	}
	limit := h.cfg.Builds.MaxArchiveBytes()
	f, err := os.CreateTemp("", "capsule-e2b-upload-*")
	if err != nil {
		h.fail(w, r, fmt.Errorf("e2bapi: spool upload: %w", err))
		return
	}
	defer func() { f.Close(); os.Remove(f.Name()) }()
	n, err := io.Copy(f, io.LimitReader(r.Body, limit+1))
	if err != nil {
		h.fail(w, r, invalid("the upload broke off"))
		return
	}
	if n > limit {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("archive: over the limit of %d bytes", limit))
		return
	}
	if _, err := h.cfg.Builds.StoreArchive(r.Context(), service.Principal{TeamID: teamID}, f, n, hash); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

type stepJSON struct {
	Type      string   `json:"type"`
	Args      []string `json:"args"`
	FilesHash string   `json:"filesHash"`
}

type triggerJSON struct {
	FromImage    string     `json:"fromImage"`
	FromTemplate string     `json:"fromTemplate"`
	StartCmd     string     `json:"startCmd"`
	ReadyCmd     string     `json:"readyCmd"`
	Steps        []stepJSON `json:"steps"`
}

// e2bRecipe is a recipe made of an E2B step list.
type e2bRecipe struct {
	text string
	// copies are the E2B files hashes of COPY steps, by recipe step.
	copies map[int]string
	// steps maps a recipe step (index+1) to its E2B step (1-based; 0:
	// the base).
	steps []int
	// baseErr refuses the base (an image no registry here serves).
	baseErr string
}

// oneLine is a shell command as one recipe line: as is when it is one, else
// decoded from base64 by the guest's shell.
func oneLine(cmd string) string {
	c := strings.TrimSpace(cmd)
	if c != "" && !strings.ContainsAny(c, "\n\r") && !strings.HasSuffix(c, `\`) && !strings.HasPrefix(c, "--") {
		return c
	}
	return "echo " + base64.StdEncoding.EncodeToString([]byte(cmd)) + " | base64 -d | sh"
}

// globFree is the part of a COPY source before its first glob.
func globFree(src string) string {
	parts := strings.Split(src, "/")
	var keep []string
	for _, p := range parts {
		if strings.ContainsAny(p, "*?[") {
			break
		}
		keep = append(keep, p)
	}
	if len(keep) == 0 {
		return "."
	}
	return strings.Join(keep, "/")
}

// mode is a COPY mode as octal digits (E2B sends an octal string or a
// decimal number).
func mode(m string) (string, error) {
	m = strings.TrimPrefix(strings.TrimPrefix(m, "0o"), "0")
	if m == "" {
		return "", nil
	}
	if regexp.MustCompile(`^[0-7]{1,4}$`).MatchString(m) {
		return fmt.Sprintf("%04s", m), nil
	}
	n, err := strconv.Atoi(m)
	if err != nil || n < 0 || n > 0o7777 {
		return "", invalid("COPY mode %q", m)
	}
	return fmt.Sprintf("%04o", n), nil
}

// toRecipe turns an E2B build body into a recipe.
func toRecipe(t triggerJSON) (e2bRecipe, error) {
	out := e2bRecipe{copies: map[int]string{}}
	var lines []string
	user := ""
	add := func(e2bStep int, line string, isStep bool) {
		lines = append(lines, line)
		if isStep {
			out.steps = append(out.steps, e2bStep)
		}
	}
	switch {
	case t.FromTemplate != "":
		name, _, _ := strings.Cut(t.FromTemplate, ":")
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			name = name[i+1:] // team/name: our names are per team already
		}
		add(0, "FROM "+name, false)
	default:
		img := t.FromImage
		if img == "" {
			img = e2bBaseImage
		}
		if base, _, _ := strings.Cut(img, ":"); base != e2bBaseImage {
			out.baseErr = fmt.Sprintf("the image %q cannot be pulled: this server reaches no container registry; "+
				"build from a template (fromTemplate) or from E2B's default base image (%s)", img, e2bBaseImage)
			return out, nil
		}
		add(0, "FROM base", false)
		// E2B's base ends with USER user.
		add(0, "USER user", true)
		user = "user"
	}
	for i, s := range t.Steps {
		n := i + 1
		arg := func(k int) string {
			if k < len(s.Args) {
				return s.Args[k]
			}
			return ""
		}
		switch strings.ToUpper(s.Type) {
		case "RUN":
			if u := arg(1); u != "" && u != user {
				add(n, "USER "+u, true)
				add(n, "RUN "+oneLine(arg(0)), true)
				if user != "" {
					add(n, "USER "+user, true)
				}
				continue
			}
			add(n, "RUN "+oneLine(arg(0)), true)
		case "COPY":
			if !filesHashRe.MatchString(s.FilesHash) {
				return out, invalid("steps[%d]: COPY needs its filesHash", i)
			}
			line := "COPY"
			if o := arg(2); o != "" {
				line += " --chown=" + o
			}
			m, err := mode(arg(3))
			if err != nil {
				return out, err
			}
			if m != "" {
				line += " --chmod=" + m
			}
			dst := arg(1)
			if dst == "" {
				return out, invalid("steps[%d]: COPY needs a destination", i)
			}
			add(n, line+" "+recipe.Quote(globFree(arg(0)))+" "+recipe.Quote(dst), true)
			out.copies[len(out.steps)] = s.FilesHash
		case "ENV":
			if len(s.Args) == 0 || len(s.Args)%2 != 0 {
				return out, invalid("steps[%d]: ENV takes key, value pairs", i)
			}
			line := "ENV"
			for k := 0; k < len(s.Args); k += 2 {
				line += " " + s.Args[k] + "=" + recipe.Quote(s.Args[k+1])
			}
			add(n, line, true)
		case "WORKDIR":
			add(n, "WORKDIR "+recipe.Quote(arg(0)), true)
		case "USER":
			user = arg(0)
			add(n, "USER "+user, true)
		default:
			return out, invalid("steps[%d]: step type %q is not supported", i, s.Type)
		}
	}
	// Finalization: E2B snapshots every template; the ready command gates
	// it (E2B's defaults: sleep 20 after a start command, else at once).
	if t.StartCmd != "" {
		lines = append(lines, "START "+oneLine(t.StartCmd))
	}
	ready := t.ReadyCmd
	if ready == "" {
		ready = "true"
		if t.StartCmd != "" {
			ready = "sleep 20"
		}
	}
	lines = append(lines, "HEALTHCHECK --interval=2s --timeout=60s --start-period=0 --retries=300 "+oneLine(ready))
	out.text = strings.Join(lines, "\n") + "\n"
	return out, nil
}

type buildMeta struct {
	Steps []int `json:"e2b_steps"`
}

// triggerBuild: the step list becomes the build's recipe; the build is
// queued (202). An image that cannot be pulled fails the build at its
// base step, as E2B reports it.
func (h *Handler) triggerBuild(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := h.e2bBuild(r.Context(), p, r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var req triggerJSON
	if _, err := decode(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	rec, err := toRecipe(req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if rec.baseErr != "" {
		if _, err := h.cfg.Builds.FailWaiting(r.Context(), p, b.ID, 0, rec.baseErr); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		return
	}
	arcs := map[int]pgtype.UUID{}
	for step, hash := range rec.copies {
		id, ok, err := h.cfg.Builds.FindArchive(r.Context(), p, hash)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if !ok {
			h.fail(w, r, invalid("the files of COPY (hash %s) were not uploaded", hash))
			return
		}
		arcs[step] = id
	}
	meta := map[string]any{"e2b_steps": rec.steps}
	if tags := builds.Tags(b.Build); len(tags) > 0 {
		meta[builds.MetaTags] = tags
	}
	if _, err := h.cfg.Builds.Trigger(r.Context(), p, b.ID, rec.text, arcs, meta); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// e2bBuild is the path's build, which must be of the path's template.
func (h *Handler) e2bBuild(ctx context.Context, p service.Principal, r *http.Request) (builds.Build, error) {
	notFound := &service.Error{Kind: service.ErrNotFound, Msg: "build not found"}
	id, err := wireid.Parse(wireid.Build, r.PathValue("buildID"))
	if err != nil {
		return builds.Build{}, notFound
	}
	b, err := h.cfg.Builds.Get(ctx, p, id, false)
	if err != nil {
		return builds.Build{}, err
	}
	name, err := templateName(r.PathValue("templateID"))
	if err != nil || name != b.TemplateName {
		return builds.Build{}, notFound
	}
	return b, nil
}

type logEntryJSON struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
}

// buildStatus: the build's status and its log entries after logsOffset
// (at most 100; none once drained).
func (h *Handler) buildStatus(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := h.e2bBuild(r.Context(), p, r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var offset int64
	if v := r.URL.Query().Get("logsOffset"); v != "" {
		if offset, err = strconv.ParseInt(v, 10, 64); err != nil || offset < 0 {
			h.fail(w, r, invalid("logsOffset: a whole number ≥ 0"))
			return
		}
	}
	lines, cur, err := h.cfg.Builds.Logs(r.Context(), p, b.ID, false, offset, maxStatusEntries)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	entries, logs := []logEntryJSON{}, []string{}
	for _, l := range lines {
		level := "info"
		if l.Stream == "stderr" {
			level = "error"
		}
		entries = append(entries, logEntryJSON{Timestamp: l.Time, Level: level, Message: l.Line})
		logs = append(logs, l.Line)
	}
	status := map[string]string{builds.StatusWaiting: "waiting", builds.StatusPending: "building", builds.StatusRunning: "building",
		builds.StatusSuccess: "ready", builds.StatusFailed: "error", builds.StatusCancelled: "error"}[cur.Status]
	out := map[string]any{"buildID": builds.ID(cur.ID), "templateID": cur.TemplateName, "status": status, "logEntries": entries, "logs": logs}
	if status == "error" {
		out["reason"] = map[string]any{"message": cur.Error, "step": failedStep(cur.Build)}
	}
	writeJSON(w, http.StatusOK, out)
}

// failedStep names a failed build's step as E2B does: "base", the E2B
// step's number, or "finalize".
func failedStep(b db.Build) string {
	if !b.FailedStep.Valid || b.FailedStep.Int32 == 0 {
		return "base"
	}
	n := int(b.FailedStep.Int32)
	if n > int(b.TotalSteps) {
		return "finalize"
	}
	var m buildMeta
	if json.Unmarshal(b.Metadata, &m) != nil || n > len(m.Steps) {
		return strconv.Itoa(n)
	}
	if m.Steps[n-1] == 0 {
		return "base"
	}
	return strconv.Itoa(m.Steps[n-1])
}
