package builds

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/recipe"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Where a build keeps its files in the build sandbox (removed before the
// template is made).
const (
	buildDir    = "/tmp/capsule-build"
	contextDir  = buildDir + "/context"
	contextFile = buildDir + "/context.tar.gz"
	// MetadataKey marks a build sandbox with its build's ID.
	MetadataKey = "capsule_build"
)

// attempt is one run of a build by one job.
type attempt struct {
	s    *Service
	b    db.Build
	job  int64
	logs *buildLog
	p    service.Principal
	sbx  pgtype.UUID
}

// run runs the build to its end and always destroys its sandbox.
func (a *attempt) run(parent context.Context) (res result) {
	s := a.s
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	r, err := recipe.Parse(a.b.Recipe)
	if err != nil {
		return result{err: &stepError{msg: "recipe: " + err.Error()}}
	}
	a.p = service.Principal{TeamID: idOf[wireid.KindTeam](a.b.TeamID), UserID: idOf[wireid.KindUser](a.b.CreatedBy), ActorName: "build " + ID(a.b.ID)}
	a.logs.system(0, "attempt %d of %d", a.b.Attempts, a.b.MaxAttempts)
	// The heartbeat: alive, cancel asked, build lost; and the log flusher.
	done := make(chan struct{})
	defer func() {
		close(done)
		// Whatever happened, the sandbox goes.
		bg, c := context.WithTimeout(context.WithoutCancel(parent), 2*time.Minute)
		defer c()
		a.destroy(bg)
		if err := a.logs.flush(bg); err != nil && !errors.Is(err, errLost) {
			s.log.WarnContext(bg, "build log", "build", ID(a.b.ID), "err", err)
		}
		// A cancel or a lost build wins over the error it caused.
		if cause := context.Cause(ctx); res.err != nil && (errors.Is(cause, errCancelled) || errors.Is(cause, errLost)) {
			res.err = cause
		}
	}()
	go a.beat(ctx, cancel, done)

	// The layer cache (layers.go): the deepest cached prefix of the steps.
	hashes, err := a.layerHashes(ctx, r)
	if err != nil && !errdefs.IsNotFound(err) {
		s.log.WarnContext(ctx, "layer cache: hashes", "build", ID(a.b.ID), "err", err)
	}
	cached, layer, err := a.cachedLayer(ctx, hashes)
	if err != nil {
		s.log.WarnContext(ctx, "layer cache: lookup", "build", ID(a.b.ID), "err", err)
		cached = 0
	}

	// FROM: the build sandbox.
	vcpus, mem := a.b.VCPUs, a.b.MemoryMB
	internet := true
	autoPause := false
	create := func(from string) (pgtype.UUID, error) {
		return s.guest.create(ctx, a.p, service.CreateSandbox{Template: from, VCPUs: vcpus, MemoryMB: mem,
			Metadata: map[string]string{MetadataKey: ID(a.b.ID)}, Internet: &internet, AutoPause: &autoPause})
	}
	var id pgtype.UUID
	if cached > 0 {
		a.logs.system(0, "FROM %s: steps 1-%d are cached; creating the build sandbox from their layer (%d vCPUs, %d MiB)", r.From, cached, vcpus, mem)
		if id, err = create(layer); errdefs.IsNotFound(err) {
			a.logs.system(0, "the cached layer is gone: building every step")
			cached = 0
		}
	}
	if cached == 0 {
		a.logs.system(0, "FROM %s: creating the build sandbox (%d vCPUs, %d MiB)", r.From, vcpus, mem)
		id, err = create(r.From)
	}
	if err != nil {
		if errdefs.IsNotFound(err) {
			return result{err: &stepError{step: 0, line: r.FromLine, msg: fmt.Sprintf("FROM: template %q not found", r.From)}}
		}
		return result{err: classify(err, 0, r.FromLine)}
	}
	a.sbx = id
	if err := s.st.Queries().SetBuildSandbox(ctx, db.SetBuildSandboxParams{ID: a.b.ID, JobID: pgtype.Int8{Int64: a.job, Valid: true}, SandboxID: id}); err != nil {
		return result{err: fmt.Errorf("builds: record sandbox: %w", err)}
	}
	if a.b.ArchiveID.Valid && needsContext(a.b, r, cached) {
		a.logs.system(0, "unpacking the archive")
		if err := a.unpack(ctx, a.b.ArchiveID, contextDir); err != nil {
			return result{err: err}
		}
	}
	for i, st := range r.Steps {
		n := i + 1
		if err := s.st.Queries().SetBuildProgress(ctx, db.SetBuildProgressParams{ID: a.b.ID, JobID: pgtype.Int8{Int64: a.job, Valid: true}, CurrentStep: int32(n)}); err != nil {
			return result{err: fmt.Errorf("builds: progress: %w", err), step: n}
		}
		if n <= cached {
			a.logs.system(n, "step %d/%d (line %d): cached: %s", n, len(r.Steps), st.Line, truncate(st.Text, 1000))
			_ = s.st.Queries().FinishBuildStep(ctx, db.FinishBuildStepParams{BuildID: a.b.ID, Step: int32(n), Status: StatusSuccess})
			continue
		}
		_ = s.st.Queries().StartBuildStep(ctx, db.StartBuildStepParams{BuildID: a.b.ID, Step: int32(n)})
		a.logs.system(n, "step %d/%d (line %d): %s", n, len(r.Steps), st.Line, truncate(st.Text, 1000))
		exit, err := a.step(ctx, n, st)
		a.logs.endStep(n)
		status := StatusSuccess
		if err != nil {
			status = StatusFailed
			if errors.Is(context.Cause(ctx), errCancelled) {
				status = StatusCancelled
			}
		}
		bg := context.WithoutCancel(ctx)
		_ = s.st.Queries().FinishBuildStep(bg, db.FinishBuildStepParams{BuildID: a.b.ID, Step: int32(n), Status: status, ExitCode: exit})
		if err != nil {
			return result{err: err, step: n}
		}
	}
	// Finalize: the layer of all the steps (without the build's files),
	// START and the healthcheck, then the template.
	fin := len(r.Steps) + 1
	if len(hashes) == len(r.Steps) && len(r.Steps) > cached {
		if _, err := a.exec(ctx, fin, service.ExecCommand{Cmd: "rm -rf " + buildDir + "; sync", User: "root", TimeoutSec: 300}, false); err != nil {
			return result{err: classify(err, fin, 0), step: fin}
		}
		a.saveLayer(ctx, hashes, len(r.Steps))
		if err := context.Cause(ctx); err != nil {
			return result{err: err, step: fin}
		}
	}
	final := r.Final()
	kind := store.TemplateImage
	if r.Healthcheck != nil {
		kind = store.TemplateSnapshot
		if r.StartLine != 0 {
			a.logs.system(fin, "START (line %d): %s", r.StartLine, r.Start)
			if err := a.start(ctx, fin, r.StartLine, final, r.Start); err != nil {
				return result{err: err, step: fin}
			}
		}
		if err := a.healthcheck(ctx, fin, final, r.Healthcheck); err != nil {
			return result{err: err, step: fin}
		}
	} else if r.StartLine != 0 {
		a.logs.system(fin, "no HEALTHCHECK: an image template, which boots cold; START (line %d) does not run in it", r.StartLine)
	}
	if _, err := a.exec(ctx, fin, service.ExecCommand{Cmd: "rm -rf " + buildDir + "; sync", User: "root", TimeoutSec: 300}, false); err != nil {
		return result{err: classify(err, fin, 0), step: fin}
	}
	a.logs.system(fin, "making the %s template %q", kind, a.b.TemplateName)
	tpl, err := s.guest.publish(ctx, a.p, service.PublishTemplate{SandboxID: idOf[wireid.KindSandbox](id), Name: a.b.TemplateName, Kind: kind, BuildID: ID(a.b.ID), Tags: Tags(a.b),
		Defaults: service.TemplateDefaults{User: r.User, Workdir: r.Workdir, Env: envMap(r.Env)}})
	if err != nil {
		return result{err: classify(err, fin, 0), step: fin}
	}
	return result{template: tpl, step: len(r.Steps)}
}

// beat keeps the build's heartbeat and flushes its log until done; a
// cancel asked or the build lost cancels ctx with that cause.
func (a *attempt) beat(ctx context.Context, cancel context.CancelCauseFunc, done <-chan struct{}) {
	s := a.s
	flush := time.NewTicker(250 * time.Millisecond)
	defer flush.Stop()
	hb := time.NewTicker(s.cfg.HeartbeatInterval)
	defer hb.Stop()
	for {
		select {
		case <-done:
			return
		case <-flush.C:
			if err := a.logs.flush(ctx); errors.Is(err, errLost) {
				cancel(errLost)
			}
		case <-hb.C:
			want, err := s.st.Queries().BuildHeartbeat(ctx, db.BuildHeartbeatParams{ID: a.b.ID, JobID: pgtype.Int8{Int64: a.job, Valid: true}})
			switch {
			case errors.Is(err, store.ErrNotFound):
				cancel(errLost)
			case err != nil:
				s.log.WarnContext(ctx, "build heartbeat", "build", ID(a.b.ID), "err", err)
			case want:
				a.logs.system(0, "cancel requested")
				cancel(errCancelled)
			}
		}
	}
}

// destroy destroys the attempt's sandbox, if it made one.
func (a *attempt) destroy(ctx context.Context) {
	if !a.sbx.Valid {
		return
	}
	if err := a.s.guest.destroy(ctx, a.p, a.sbx); err != nil && !errdefs.IsNotFound(err) {
		a.s.log.ErrorContext(ctx, "destroy a build sandbox", "build", ID(a.b.ID), "sandbox", service.ID(a.sbx), "err", err)
		return
	}
	_ = a.s.st.Queries().SetBuildSandbox(ctx, db.SetBuildSandboxParams{ID: a.b.ID, JobID: pgtype.Int8{Int64: a.job, Valid: true}})
}

// exec runs a command of step n in the sandbox, its output in the log.
// Output of system commands (logOutput false) is logged only on failure.
func (a *attempt) exec(ctx context.Context, n int, cmd service.ExecCommand, logOutput bool) (service.ExecExit, error) {
	var kept []string
	out := func(stream string, b []byte) {
		if logOutput {
			a.logs.output(n, stream, b)
			return
		}
		if len(kept) < 64 {
			kept = append(kept, strings.TrimRight(string(b), "\n"))
		}
	}
	exit, err := a.s.guest.exec(ctx, a.p, a.sbx, cmd, out)
	if err != nil {
		if c := context.Cause(ctx); c != nil {
			return exit, c
		}
		return exit, err
	}
	if !logOutput && (exit.ExitCode != 0 || exit.Signal != "") {
		for _, k := range kept {
			a.logs.system(n, "%s", k)
		}
	}
	return exit, nil
}

// ok turns a process's end into nil or a stepError.
func ok(exit service.ExecExit, n, line int, what string, timeout time.Duration) error {
	switch {
	case exit.TimedOut:
		return &stepError{step: n, line: line, msg: fmt.Sprintf("%s timed out after %s", what, timeout)}
	case exit.Signal != "":
		return &stepError{step: n, line: line, msg: fmt.Sprintf("%s was killed by %s", what, exit.Signal)}
	case exit.ExitCode != 0:
		return &stepError{step: n, line: line, msg: fmt.Sprintf("%s exited with status %d", what, exit.ExitCode)}
	}
	return nil
}

// step runs step n.
func (a *attempt) step(ctx context.Context, n int, st recipe.Step) (pgtype.Int4, error) {
	var cmd service.ExecCommand
	what := string(st.Kind)
	logOutput := false
	timeout := 5 * time.Minute
	switch st.Kind {
	case recipe.Env:
		return pgtype.Int4{}, nil // taken into the context of later steps
	case recipe.Run:
		timeout = st.Timeout
		cmd = service.ExecCommand{Cmd: st.Cmd, User: st.Ctx.User, Cwd: st.Ctx.Workdir, Env: envMap(st.Ctx.Env),
			TimeoutSec: int32((st.Timeout + time.Second - 1) / time.Second)}
		logOutput = true
	case recipe.User:
		cmd = service.ExecCommand{Cmd: userScript, User: "root", Env: map[string]string{"NAME": st.Name}}
	case recipe.Workdir:
		cmd = service.ExecCommand{Cmd: workdirScript, User: "root", Env: map[string]string{"DIR": st.Path, "OWNER": st.Ctx.User}}
	case recipe.Copy:
		owner := st.Chown
		if owner == "" {
			owner = st.Ctx.User
		}
		dir := contextDir
		if arc, ok := copyArchive(a.b, n); ok {
			// This step's own archive (E2B's COPY).
			dir = fmt.Sprintf("%s/context-%d", buildDir, n)
			if err := a.unpack(ctx, arc, dir); err != nil {
				return pgtype.Int4{}, err
			}
		}
		cmd = service.ExecCommand{Cmd: copyScript, User: "root", Env: map[string]string{"SRC": st.Src, "DST": st.Path,
			"OWNER": owner, "MODE": st.Chmod, "CONTEXT": dir}}
		logOutput = true
	default:
		return pgtype.Int4{}, &stepError{step: n, line: st.Line, msg: "unknown step " + what}
	}
	if cmd.TimeoutSec == 0 {
		cmd.TimeoutSec = int32(timeout / time.Second)
	}
	exit, err := a.exec(ctx, n, cmd, logOutput)
	if err != nil {
		return pgtype.Int4{}, classify(err, n, st.Line)
	}
	code := pgtype.Int4{Int32: exit.ExitCode, Valid: true}
	if st.Kind == recipe.Run {
		return code, ok(exit, n, st.Line, "RUN", timeout)
	}
	return code, ok(exit, n, st.Line, what, timeout)
}

// unpack puts a stored archive in the sandbox and extracts it into dir
// with the sandbox's tar (the archive was checked on upload).
func (a *attempt) unpack(ctx context.Context, id pgtype.UUID, dir string) error {
	r := &archiveReader{ctx: ctx, q: a.s.st.Queries(), id: id}
	if _, err := a.exec(ctx, 0, service.ExecCommand{Cmd: "mkdir -p " + dir, User: "root", TimeoutSec: 60}, false); err != nil {
		return classify(err, 0, 0)
	}
	if err := a.s.guest.writeFile(ctx, a.p, a.sbx, contextFile, r); err != nil {
		if c := context.Cause(ctx); c != nil {
			return c
		}
		return classify(err, 0, 0)
	}
	exit, err := a.exec(ctx, 0, service.ExecCommand{Cmd: "tar -xzf " + contextFile + " -C " + dir + " && rm -f " + contextFile,
		User: "root", TimeoutSec: 1800}, false)
	if err != nil {
		return classify(err, 0, 0)
	}
	return ok(exit, 0, 0, "unpacking the archive", 30*time.Minute)
}

// start starts the START command in the background, detached from the
// exec that starts it, as the final user in the final directory.
func (a *attempt) start(ctx context.Context, n, line int, c recipe.Context, cmd string) error {
	env := envMap(c.Env)
	if env == nil {
		env = map[string]string{}
	}
	env["CAPSULE_START"] = cmd
	exit, err := a.exec(ctx, n, service.ExecCommand{
		Cmd:  `setsid sh -c "$CAPSULE_START" >/tmp/capsule-start.log 2>&1 </dev/null &`,
		User: c.User, Cwd: c.Workdir, Env: env, TimeoutSec: 60}, false)
	if err != nil {
		return classify(err, n, line)
	}
	return ok(exit, n, line, "START", time.Minute)
}

// healthcheck runs the check until it passes: failures in its start
// period do not count, then Retries failures in a row fail the build.
func (a *attempt) healthcheck(ctx context.Context, n int, c recipe.Context, hc *recipe.Check) error {
	started := a.s.now()
	failures := 0
	for try := 1; ; try++ {
		exit, err := a.exec(ctx, n, service.ExecCommand{Cmd: hc.Cmd, User: c.User, Cwd: c.Workdir, Env: envMap(c.Env),
			TimeoutSec: int32((hc.Timeout + time.Second - 1) / time.Second)}, false)
		if err != nil {
			return classify(err, n, hc.Line)
		}
		if ok(exit, n, hc.Line, "HEALTHCHECK", hc.Timeout) == nil {
			a.logs.system(n, "HEALTHCHECK passed (try %d)", try)
			return nil
		}
		inStart := a.s.now().Sub(started) < hc.StartPeriod
		if !inStart {
			failures++
		}
		a.logs.system(n, "HEALTHCHECK try %d failed (exit %d%s)", try, exit.ExitCode, map[bool]string{true: ", in the start period"}[inStart])
		if failures >= hc.Retries {
			return &stepError{step: n, line: hc.Line, msg: fmt.Sprintf("HEALTHCHECK failed %d times after its start period", failures)}
		}
		if err := a.s.sleep(ctx, hc.Interval); err != nil {
			if c := context.Cause(ctx); c != nil {
				return c
			}
			return err
		}
	}
}

// needsContext reports whether a step after the cached ones copies from
// the build's archive.
func needsContext(b db.Build, r *recipe.Recipe, cached int) bool {
	for i, st := range r.Steps {
		if _, own := copyArchive(b, i+1); i >= cached && st.Kind == recipe.Copy && !own {
			return true
		}
	}
	return false
}

func envMap(env []recipe.EnvVar) map[string]string {
	if len(env) == 0 {
		return nil
	}
	m := make(map[string]string, len(env))
	for _, v := range env {
		m[v.Key] = v.Value
	}
	return m
}

// userScript creates user $NAME when missing (a home; bash when the image
// has it; useradd, else adduser, else the passwd and group files written
// directly, as on a busybox image without either) with passwordless sudo.
const userScript = `set -e
if ! id -u "$NAME" >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    if [ -x /bin/bash ]; then useradd --create-home --shell /bin/bash "$NAME"; else useradd --create-home "$NAME"; fi
  elif command -v adduser >/dev/null 2>&1; then
    adduser -D "$NAME"
  else
    uid=$(awk -F: 'BEGIN { m = 999 } $3 > m && $3 < 60000 { m = $3 } END { print m + 1 }' /etc/passwd)
    for f in /etc/passwd /etc/group; do [ -z "$(tail -c 1 "$f")" ] || echo >> "$f"; done
    printf '%s:x:%s:%s::/home/%s:/bin/sh\n' "$NAME" "$uid" "$uid" "$NAME" >> /etc/passwd
    printf '%s:x:%s:\n' "$NAME" "$uid" >> /etc/group
    mkdir -p "/home/$NAME"
    chown "$uid:$uid" "/home/$NAME"
  fi
fi
passwd -d "$NAME" >/dev/null 2>&1 || true
mkdir -p /etc/sudoers.d
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$NAME" > "/etc/sudoers.d/90-capsule-$NAME"
chmod 0440 "/etc/sudoers.d/90-capsule-$NAME"
`

// workdirScript makes $DIR, and gives it to $OWNER when it made it.
const workdirScript = `set -e
if [ ! -d "$DIR" ]; then
  mkdir -p "$DIR"
  [ "$OWNER" = root ] || chown "$OWNER" "$DIR"
fi
`

// copyScript copies $CONTEXT/$SRC to $DST (a directory's content into
// $DST; a file to $DST, or into it when it ends in / or is a directory),
// owned by $OWNER (user[:group]; a user alone: with its group), mode $MODE
// when set.
const copyScript = `set -e
src="$CONTEXT/$SRC"
if [ ! -e "$src" ] && [ ! -L "$src" ]; then echo "COPY: $SRC is not in the archive" >&2; exit 1; fi
case "$OWNER" in *:*) own="$OWNER" ;; *) own="$OWNER:$(id -gn "$OWNER" 2>/dev/null || echo "$OWNER")" ;; esac
n=0
if [ -d "$src" ] && [ ! -L "$src" ]; then
  mkdir -p "$DST"
  for e in "$src"/* "$src"/.[!.]* "$src"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    t="$DST/$(basename "$e")"
    rm -rf "$t"
    cp -a "$e" "$t"
    chown -hR "$own" "$t"
    [ -z "$MODE" ] || [ -L "$t" ] || chmod -R "$MODE" "$t"
    n=$((n+1))
  done
else
  case "$DST" in
    */) mkdir -p "$DST"; t="$DST$(basename "$src")" ;;
    *) if [ -d "$DST" ] && [ ! -L "$DST" ]; then t="$DST/$(basename "$src")"; else mkdir -p "$(dirname "$DST")"; t="$DST"; fi ;;
  esac
  rm -rf "$t"
  cp -a "$src" "$t"
  chown -h "$own" "$t"
  [ -z "$MODE" ] || [ -L "$t" ] || chmod "$MODE" "$t"
  n=1
fi
echo "copied $n entries to $DST"
`
