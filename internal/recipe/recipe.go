package recipe

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Limits of a recipe. A recipe over them is refused with an Error.
const (
	MaxBytes        = 256 << 10 // the whole text
	MaxInstructions = 500
	MaxRunTimeout   = 2 * time.Hour
	// DefaultRunTimeout is a RUN's timeout when it names none.
	DefaultRunTimeout = 10 * time.Minute
	maxErrors         = 20
)

// Healthcheck defaults (HEALTHCHECK without the flag).
const (
	DefaultInterval    = 2 * time.Second
	DefaultTimeout     = 10 * time.Second
	DefaultStartPeriod = 60 * time.Second
	DefaultRetries     = 5
)

// Kind is an instruction's keyword, upper case.
type Kind string

// The instructions.
const (
	From        Kind = "FROM"
	Run         Kind = "RUN"
	Env         Kind = "ENV"
	Workdir     Kind = "WORKDIR"
	User        Kind = "USER"
	Copy        Kind = "COPY"
	Start       Kind = "START"
	Healthcheck Kind = "HEALTHCHECK"
)

// EnvVar is one variable.
type EnvVar struct {
	Key, Value string
}

// Context is what a step runs with: its user, its directory and the
// environment accumulated by the ENV instructions before it.
type Context struct {
	User    string
	Workdir string
	Env     []EnvVar // sorted by key
}

// Step is one instruction that runs in the build sandbox (RUN, ENV,
// WORKDIR, USER, COPY), in recipe order.
type Step struct {
	Line int    // 1-based line where the instruction starts
	Kind Kind   // RUN, ENV, WORKDIR, USER or COPY
	Text string // the instruction as written (continuations joined)

	Cmd     string        // RUN: the shell command
	Timeout time.Duration // RUN: the command's timeout

	Vars []EnvVar // ENV: the variables it sets, in order

	Path string // WORKDIR: the absolute directory; COPY: the absolute destination

	Name string // USER: the user

	Src   string // COPY: the source, a clean relative path in the archive ("." for all of it)
	Chown string // COPY: "user" or "user:group" ("": the step's user)
	Chmod string // COPY: octal mode ("": as archived)

	// Ctx is what the step runs with (for USER and WORKDIR: the state
	// before them; a USER step creates its user as root).
	Ctx Context
}

// Check is the healthcheck of a snapshot build.
type Check struct {
	Line        int
	Cmd         string
	Interval    time.Duration
	Timeout     time.Duration
	StartPeriod time.Duration
	Retries     int
}

// Recipe is a parsed, valid recipe.
type Recipe struct {
	From     string // the template the build starts from
	FromLine int
	Steps    []Step

	// Start is the START command ("" none), run as the final context's
	// user in its directory with its environment.
	Start     string
	StartLine int
	// Healthcheck is nil for an image-only build.
	Healthcheck *Check

	// The template's defaults: the last USER ("" none), the last WORKDIR
	// ("" none), and the environment of every ENV (sorted by key).
	User    string
	Workdir string
	Env     []EnvVar
}

// Final is the context after the last step (where START runs).
func (r *Recipe) Final() Context {
	c := Context{User: "root", Workdir: "/", Env: r.Env}
	if r.User != "" {
		c.User = r.User
	}
	if r.Workdir != "" {
		c.Workdir = r.Workdir
	}
	return c
}

// NeedsArchive reports whether a COPY needs an uploaded archive.
func (r *Recipe) NeedsArchive() bool {
	for _, s := range r.Steps {
		if s.Kind == Copy {
			return true
		}
	}
	return false
}

// Error is one bad line.
type Error struct {
	Line int // 0: the recipe as a whole
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return "recipe: " + e.Msg
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
}

// Errors are every bad line of a recipe (at most 20), in line order.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// line is an instruction with its continuations joined.
type line struct {
	n    int
	text string
}

// split cuts the text into instructions: comments and blank lines
// dropped, continuations joined.
func split(src string) ([]line, *Error) {
	var out []line
	var cur strings.Builder
	start := 0 // line of the instruction being continued; 0: none
	rows := strings.Split(src, "\n")
	for i, row := range rows {
		n := i + 1
		row = strings.TrimSuffix(row, "\r")
		trimmed := strings.TrimSpace(row)
		if start != 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue // a comment or a blank line inside a continuation
		}
		if start == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		// Trim the same white space TrimSpace does, so that a joined
		// instruction never ends in a backslash it did not continue with
		// ("RUN \\\r\r" would otherwise be a RUN of one backslash, which
		// Format could not write back).
		body := strings.TrimRightFunc(row, unicode.IsSpace)
		cont := strings.HasSuffix(body, `\`)
		if cont {
			body = strings.TrimSuffix(body, `\`)
		}
		if start == 0 {
			start = n
			body = strings.TrimLeftFunc(body, unicode.IsSpace)
		}
		cur.WriteString(body)
		if !cont {
			out = append(out, line{n: start, text: strings.TrimSpace(cur.String())})
			cur.Reset()
			start = 0
		}
	}
	if start != 0 {
		return nil, &Error{Line: start, Msg: "the instruction ends with a continuation backslash and no next line"}
	}
	return out, nil
}

var (
	envKeyRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	userRE     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	ownerRE    = regexp.MustCompile(`^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})(:([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}))?$`)
	modeRE     = regexp.MustCompile(`^[0-7]{3,4}$`)
	templateRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
)

// Parse parses and validates a recipe. Its error is Errors.
func Parse(src string) (*Recipe, error) {
	if len(src) > MaxBytes {
		return nil, Errors{{Msg: fmt.Sprintf("the recipe is %d bytes; at most %d", len(src), MaxBytes)}}
	}
	if strings.ContainsRune(src, 0) {
		return nil, Errors{{Msg: "the recipe contains a NUL byte"}}
	}
	lines, lerr := split(src)
	var errs Errors
	fail := func(n int, format string, args ...any) {
		if len(errs) < maxErrors {
			errs = append(errs, &Error{Line: n, Msg: fmt.Sprintf(format, args...)})
		}
	}
	if len(lines) > MaxInstructions {
		return nil, Errors{{Msg: fmt.Sprintf("the recipe has %d instructions; at most %d", len(lines), MaxInstructions)}}
	}
	r := &Recipe{}
	ctx := Context{User: "root", Workdir: "/"}
	env := map[string]string{}
	for i, l := range lines {
		kw, rest := cutWord(l.text)
		kind := Kind(strings.ToUpper(kw))
		if i == 0 && kind != From {
			fail(l.n, "the recipe must start with FROM <template>, not %s", quoteWord(kw))
		}
		step := Step{Line: l.n, Kind: kind, Text: l.text, Ctx: ctx}
		switch kind {
		case From:
			if i != 0 {
				fail(l.n, "FROM must be the first instruction, and appear once")
				continue
			}
			if rest == "" || strings.ContainsAny(rest, " \t") {
				fail(l.n, "FROM takes one template name")
				continue
			}
			if !templateRE.MatchString(rest) {
				fail(l.n, "FROM: %q is not a template name", rest)
				continue
			}
			r.From, r.FromLine = rest, l.n
		case Run:
			flags, cmd, err := leadingFlags(rest, "timeout")
			if err != nil {
				fail(l.n, "RUN: %v", err)
				continue
			}
			if cmd == "" {
				fail(l.n, "RUN needs a command")
				continue
			}
			step.Cmd, step.Timeout = cmd, DefaultRunTimeout
			if v, ok := flags["timeout"]; ok {
				d, err := duration(v)
				if err != nil || d <= 0 || d > MaxRunTimeout {
					fail(l.n, "RUN: --timeout=%s: want a duration between 1s and %s", v, MaxRunTimeout)
					continue
				}
				step.Timeout = d
			}
			r.Steps = append(r.Steps, step)
		case Env:
			words, err := fields(rest)
			if err != nil {
				fail(l.n, "ENV: %v", err)
				continue
			}
			if len(words) == 0 {
				fail(l.n, "ENV needs at least one key=value")
				continue
			}
			bad := false
			for _, w := range words {
				k, v, ok := strings.Cut(w, "=")
				if !ok || !envKeyRE.MatchString(k) {
					fail(l.n, "ENV: %q is not key=value with a key of letters, digits and _", w)
					bad = true
					break
				}
				step.Vars = append(step.Vars, EnvVar{Key: k, Value: v})
			}
			if bad {
				continue
			}
			for _, v := range step.Vars {
				env[v.Key] = v.Value
			}
			ctx.Env = sortedEnv(env)
			r.Steps = append(r.Steps, step)
		case Workdir:
			words, err := fields(rest)
			if err != nil || len(words) != 1 || words[0] == "" {
				fail(l.n, "WORKDIR takes one path")
				continue
			}
			p := words[0]
			if !path.IsAbs(p) {
				p = path.Join(ctx.Workdir, p)
			}
			step.Path = path.Clean(p)
			ctx.Workdir = step.Path
			r.Workdir = step.Path
			r.Steps = append(r.Steps, step)
		case User:
			if !userRE.MatchString(rest) {
				fail(l.n, "USER: %q is not a user name (lower-case letters, digits, _ and -, at most 32)", rest)
				continue
			}
			step.Name = rest
			ctx.User = rest
			r.User = rest
			r.Steps = append(r.Steps, step)
		case Copy:
			if err := parseCopy(&step, rest, ctx.Workdir); err != nil {
				fail(l.n, "COPY: %v", err)
				continue
			}
			r.Steps = append(r.Steps, step)
		case Start:
			if rest == "" {
				fail(l.n, "START needs a command")
				continue
			}
			if r.StartLine != 0 {
				fail(l.n, "START appears twice (first on line %d)", r.StartLine)
				continue
			}
			r.Start, r.StartLine = rest, l.n
		case Healthcheck:
			if r.Healthcheck != nil {
				fail(l.n, "HEALTHCHECK appears twice (first on line %d)", r.Healthcheck.Line)
				continue
			}
			c, err := parseCheck(rest)
			if err != nil {
				fail(l.n, "HEALTHCHECK: %v", err)
				continue
			}
			c.Line = l.n
			r.Healthcheck = c
		default:
			if i != 0 {
				fail(l.n, "unknown instruction %s (want FROM, RUN, ENV, WORKDIR, USER, COPY, START or HEALTHCHECK)", quoteWord(kw))
			}
		}
	}
	if lerr != nil && len(errs) < maxErrors {
		errs = append(errs, lerr)
	}
	if len(lines) == 0 && lerr == nil {
		fail(0, "the recipe is empty: it needs at least FROM <template>")
	}
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
		return nil, errs
	}
	r.Env = sortedEnv(env)
	return r, nil
}

func quoteWord(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strconv.Quote(s)
}

func sortedEnv(m map[string]string) []EnvVar {
	if len(m) == 0 {
		return nil
	}
	out := make([]EnvVar, 0, len(m))
	for k, v := range m {
		out = append(out, EnvVar{Key: k, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// duration parses a Go duration or whole seconds.
func duration(s string) (time.Duration, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

// leadingFlags takes the --name=value words at the start of s (names from
// allowed), and returns them and the rest of s, verbatim.
func leadingFlags(s string, allowed ...string) (map[string]string, string, error) {
	flags := map[string]string{}
	for strings.HasPrefix(s, "--") {
		word, rest := cutWord(s)
		name, value, ok := strings.Cut(word[2:], "=")
		if !ok || value == "" {
			return nil, "", fmt.Errorf("flag %s: want --%s=<value>", quoteWord(word), name)
		}
		if !contains(allowed, name) {
			return nil, "", fmt.Errorf("unknown flag --%s (want %s)", name, flagList(allowed))
		}
		if _, dup := flags[name]; dup {
			return nil, "", fmt.Errorf("flag --%s given twice", name)
		}
		flags[name] = value
		s = rest
	}
	return flags, s, nil
}

// cutWord splits s at its first blank: the word before, and the rest
// with its leading and trailing blanks removed.
func cutWord(s string) (word, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i+1:])
}

func flagList(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "--" + n
	}
	return strings.Join(out, ", ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func parseCheck(rest string) (*Check, error) {
	flags, cmd, err := leadingFlags(rest, "interval", "timeout", "start-period", "retries")
	if err != nil {
		return nil, err
	}
	if cmd == "" {
		return nil, fmt.Errorf("needs a command")
	}
	c := &Check{Cmd: cmd, Interval: DefaultInterval, Timeout: DefaultTimeout, StartPeriod: DefaultStartPeriod, Retries: DefaultRetries}
	for _, f := range []struct {
		name string
		dst  *time.Duration
		min  time.Duration
	}{
		{"interval", &c.Interval, 100 * time.Millisecond},
		{"timeout", &c.Timeout, 100 * time.Millisecond},
		{"start-period", &c.StartPeriod, 0},
	} {
		v, ok := flags[f.name]
		if !ok {
			continue
		}
		d, err := duration(v)
		if err != nil || d < f.min || d > time.Hour {
			return nil, fmt.Errorf("--%s=%s: want a duration between %s and 1h", f.name, v, f.min)
		}
		*f.dst = d
	}
	if v, ok := flags["retries"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return nil, fmt.Errorf("--retries=%s: want a whole number between 1 and 1000", v)
		}
		c.Retries = n
	}
	return c, nil
}

func parseCopy(step *Step, rest, workdir string) error {
	words, err := fields(rest)
	if err != nil {
		return err
	}
	var args []string
	for _, w := range words {
		if !strings.HasPrefix(w, "--") {
			args = append(args, w)
			continue
		}
		name, value, ok := strings.Cut(w[2:], "=")
		if !ok || value == "" {
			return fmt.Errorf("flag %s: want --%s=<value>", quoteWord(w), name)
		}
		switch name {
		case "chown":
			if step.Chown != "" {
				return fmt.Errorf("flag --chown given twice")
			}
			if !ownerRE.MatchString(value) {
				return fmt.Errorf("--chown=%s: want user[:group] (names or numeric ids)", value)
			}
			step.Chown = value
		case "chmod":
			if step.Chmod != "" {
				return fmt.Errorf("flag --chmod given twice")
			}
			if !modeRE.MatchString(value) {
				return fmt.Errorf("--chmod=%s: want an octal mode such as 0644 or 755", value)
			}
			step.Chmod = value
		default:
			return fmt.Errorf("unknown flag --%s (want --chown, --chmod)", name)
		}
	}
	if len(args) != 2 {
		return fmt.Errorf("takes a source and a destination, got %d paths", len(args))
	}
	src, err := ArchivePath(args[0])
	if err != nil {
		return fmt.Errorf("source %q: %v", args[0], err)
	}
	dst := args[1]
	if dst == "" {
		return fmt.Errorf("empty destination")
	}
	dir := strings.HasSuffix(dst, "/")
	if !path.IsAbs(dst) {
		dst = path.Join(workdir, dst)
	}
	dst = path.Clean(dst)
	if dir && dst != "/" {
		dst += "/"
	}
	step.Src, step.Path = src, dst
	return nil
}

// ArchivePath cleans a path inside an archive: relative, no "..", "."
// for the root.
func ArchivePath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty path")
	}
	if path.IsAbs(p) {
		return "", fmt.Errorf("must be relative to the archive's root")
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf(`must not contain ".."`)
		}
	}
	return path.Clean(p), nil
}

// fields splits s at blanks, with '…' and "…" quoting and backslash
// escapes outside single quotes.
func fields(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in := false // a word has started
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("a backslash ends the line")
			}
			i++
			cur.WriteByte(s[i])
			in = true
		case quote == '"':
			if c == '"' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote = c
			in = true
		case c == ' ' || c == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}
