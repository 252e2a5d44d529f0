package recipe

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const full = `# a recipe using every instruction
FROM base
RUN --timeout=5m apt-get install -y \
    curl \
    # a comment inside the continuation
    jq
ENV GREETING="hello world" PATH=/opt/app/bin:/usr/bin
WORKDIR /opt
WORKDIR app
USER app
COPY --chown=app:app --chmod=0755 bin/server ./bin/
copy site /srv/site
env MODE='prod "quoted"'
START ./bin/server --port 8000
HEALTHCHECK --interval=1s --timeout=3s --start-period=10s --retries=7 curl -fs localhost:8000
`

func TestParseFull(t *testing.T) {
	r, err := Parse(full)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	t.Run("from", func(t *testing.T) {
		if r.From != "base" || r.FromLine != 2 {
			t.Errorf("From = %q line %d, want base line 2", r.From, r.FromLine)
		}
	})
	t.Run("steps", func(t *testing.T) {
		type row struct {
			Line int
			Kind Kind
		}
		var got []row
		for _, s := range r.Steps {
			got = append(got, row{s.Line, s.Kind})
		}
		want := []row{{3, Run}, {7, Env}, {8, Workdir}, {9, Workdir}, {10, User}, {11, Copy}, {12, Copy}, {13, Env}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("steps = %v, want %v", got, want)
		}
	})
	t.Run("continuation", func(t *testing.T) {
		s := r.Steps[0]
		if s.Cmd != "apt-get install -y     curl     jq" || s.Timeout != 5*time.Minute {
			t.Errorf("RUN = %q timeout %s", s.Cmd, s.Timeout)
		}
	})
	t.Run("relative workdir joins the current one", func(t *testing.T) {
		if r.Steps[3].Path != "/opt/app" {
			t.Errorf("WORKDIR app = %q, want /opt/app", r.Steps[3].Path)
		}
	})
	t.Run("context per step", func(t *testing.T) {
		cp := r.Steps[5]
		if cp.Ctx.User != "app" || cp.Ctx.Workdir != "/opt/app" {
			t.Errorf("COPY runs as %q in %q", cp.Ctx.User, cp.Ctx.Workdir)
		}
		if cp.Src != "bin/server" || cp.Path != "/opt/app/bin/" || cp.Chown != "app:app" || cp.Chmod != "0755" {
			t.Errorf("COPY = %+v", cp)
		}
		user := r.Steps[4]
		if user.Ctx.User != "root" {
			t.Errorf("USER step runs as %q, want root (the state before it)", user.Ctx.User)
		}
		if r.Steps[0].Ctx.User != "root" || r.Steps[0].Ctx.Workdir != "/" || r.Steps[0].Ctx.Env != nil {
			t.Errorf("first step ctx = %+v, want root in / with no env", r.Steps[0].Ctx)
		}
		wantEnv := []EnvVar{{"GREETING", "hello world"}, {"PATH", "/opt/app/bin:/usr/bin"}}
		if !reflect.DeepEqual(cp.Ctx.Env, wantEnv) {
			t.Errorf("COPY env = %v, want %v", cp.Ctx.Env, wantEnv)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		if r.User != "app" || r.Workdir != "/opt/app" {
			t.Errorf("defaults user %q workdir %q", r.User, r.Workdir)
		}
		want := []EnvVar{{"GREETING", "hello world"}, {"MODE", `prod "quoted"`}, {"PATH", "/opt/app/bin:/usr/bin"}}
		if !reflect.DeepEqual(r.Env, want) {
			t.Errorf("Env = %v, want %v", r.Env, want)
		}
		if f := r.Final(); f.User != "app" || f.Workdir != "/opt/app" {
			t.Errorf("Final = %+v", f)
		}
	})
	t.Run("start and healthcheck", func(t *testing.T) {
		if r.Start != "./bin/server --port 8000" || r.StartLine != 14 {
			t.Errorf("Start = %q line %d", r.Start, r.StartLine)
		}
		want := &Check{Line: 15, Cmd: "curl -fs localhost:8000", Interval: time.Second, Timeout: 3 * time.Second, StartPeriod: 10 * time.Second, Retries: 7}
		if !reflect.DeepEqual(r.Healthcheck, want) {
			t.Errorf("Healthcheck = %+v, want %+v", r.Healthcheck, want)
		}
		if !r.NeedsArchive() {
			t.Error("NeedsArchive = false with COPY steps")
		}
	})
	t.Run("format round trip", func(t *testing.T) {
		again, err := Parse(Format(r))
		if err != nil {
			t.Fatalf("Parse(Format): %v\n%s", err, Format(r))
		}
		if !sameRecipe(r, again) {
			t.Errorf("round trip changed the recipe:\n%s", Format(r))
		}
	})
}

func TestParseValid(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		check     func(t *testing.T, r *Recipe)
	}{
		{"only FROM, image-only", "FROM minimal", func(t *testing.T, r *Recipe) {
			if r.From != "minimal" || len(r.Steps) != 0 || r.Healthcheck != nil || r.NeedsArchive() {
				t.Errorf("got %+v", r)
			}
			if f := r.Final(); f.User != "root" || f.Workdir != "/" {
				t.Errorf("Final = %+v, want root in /", f)
			}
		}},
		{"lower-case keywords and CRLF", "from base\r\nrun echo hi\r\n", func(t *testing.T, r *Recipe) {
			if r.Steps[0].Cmd != "echo hi" {
				t.Errorf("Cmd = %q", r.Steps[0].Cmd)
			}
		}},
		{"tab after keyword", "FROM\tbase\nRUN\techo hi", func(t *testing.T, r *Recipe) {
			if r.From != "base" || r.Steps[0].Cmd != "echo hi" {
				t.Errorf("got %q %q", r.From, r.Steps[0].Cmd)
			}
		}},
		{"timeout in seconds", "FROM base\nRUN --timeout=90 sleep 1", func(t *testing.T, r *Recipe) {
			if r.Steps[0].Timeout != 90*time.Second {
				t.Errorf("Timeout = %s", r.Steps[0].Timeout)
			}
		}},
		{"default timeout", "FROM base\nRUN true", func(t *testing.T, r *Recipe) {
			if r.Steps[0].Timeout != DefaultRunTimeout {
				t.Errorf("Timeout = %s", r.Steps[0].Timeout)
			}
		}},
		{"ENV later value wins", "FROM base\nENV A=1 B=2\nENV A=3", func(t *testing.T, r *Recipe) {
			if want := []EnvVar{{"A", "3"}, {"B", "2"}}; !reflect.DeepEqual(r.Env, want) {
				t.Errorf("Env = %v", r.Env)
			}
			if want := []EnvVar{{"A", "1"}, {"B", "2"}}; !reflect.DeepEqual(r.Steps[1].Ctx.Env, want) {
				t.Errorf("second ENV runs with %v", r.Steps[1].Ctx.Env)
			}
		}},
		{"ENV empty value and escapes", `FROM base` + "\n" + `ENV E= Q=a\ b`, func(t *testing.T, r *Recipe) {
			if want := []EnvVar{{"E", ""}, {"Q", "a b"}}; !reflect.DeepEqual(r.Env, want) {
				t.Errorf("Env = %v", r.Env)
			}
		}},
		{"COPY flags after the paths, dir source", "FROM base\nCOPY . /app --chmod=644", func(t *testing.T, r *Recipe) {
			s := r.Steps[0]
			if s.Src != "." || s.Path != "/app" || s.Chmod != "644" {
				t.Errorf("COPY = %+v", s)
			}
		}},
		{"COPY relative destination before any WORKDIR", "FROM base\nCOPY a.txt b.txt", func(t *testing.T, r *Recipe) {
			if r.Steps[0].Path != "/b.txt" || r.Steps[0].Src != "a.txt" {
				t.Errorf("COPY = %+v", r.Steps[0])
			}
		}},
		{"COPY numeric owner", "FROM base\nCOPY --chown=1000:1000 a /a", func(t *testing.T, r *Recipe) {
			if r.Steps[0].Chown != "1000:1000" {
				t.Errorf("Chown = %q", r.Steps[0].Chown)
			}
		}},
		{"healthcheck defaults", "FROM base\nHEALTHCHECK true", func(t *testing.T, r *Recipe) {
			want := &Check{Line: 2, Cmd: "true", Interval: DefaultInterval, Timeout: DefaultTimeout, StartPeriod: DefaultStartPeriod, Retries: DefaultRetries}
			if !reflect.DeepEqual(r.Healthcheck, want) {
				t.Errorf("Healthcheck = %+v", r.Healthcheck)
			}
		}},
		{"START and HEALTHCHECK before steps", "FROM base\nSTART sleep 1000\nHEALTHCHECK true\nRUN true", func(t *testing.T, r *Recipe) {
			if r.Start != "sleep 1000" || len(r.Steps) != 1 {
				t.Errorf("got %+v", r)
			}
		}},
		{"trailing blanks after the continuation backslash", "FROM base\nRUN echo a \\  \n  b", func(t *testing.T, r *Recipe) {
			if r.Steps[0].Cmd != "echo a   b" {
				t.Errorf("Cmd = %q", r.Steps[0].Cmd)
			}
		}},
		{"template with tag", "FROM team/app:v2", func(t *testing.T, r *Recipe) {
			if r.From != "team/app:v2" {
				t.Errorf("From = %q", r.From)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse(tc.src)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.src, err)
			}
			tc.check(t, r)
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string // each error, in order: "line N: substring"
	}{
		{"empty", "", []string{"recipe: the recipe is empty"}},
		{"only comments", "# nothing\n\n", []string{"recipe: the recipe is empty"}},
		{"no FROM first", "RUN true\nFROM base", []string{"line 1: the recipe must start with FROM", "line 2: FROM must be the first"}},
		{"FROM twice", "FROM base\nFROM minimal", []string{"line 2: FROM must be the first instruction, and appear once"}},
		{"FROM without a name", "FROM", []string{"line 1: FROM takes one template name"}},
		{"FROM two names", "FROM a b", []string{"line 1: FROM takes one template name"}},
		{"FROM bad name", "FROM ../etc", []string{`line 1: FROM: "../etc" is not a template name`}},
		{"unknown instruction", "FROM base\n\nADD x y", []string{`line 3: unknown instruction "ADD"`}},
		{"RUN without command", "FROM base\nRUN", []string{"line 2: RUN needs a command"}},
		{"RUN only flags", "FROM base\nRUN --timeout=5s", []string{"line 2: RUN needs a command"}},
		{"RUN bad timeout", "FROM base\nRUN --timeout=soon true", []string{"line 2: RUN: --timeout=soon: want a duration"}},
		{"RUN zero timeout", "FROM base\nRUN --timeout=0 true", []string{"line 2: RUN: --timeout=0"}},
		{"RUN timeout too long", "FROM base\nRUN --timeout=3h true", []string{"line 2: RUN: --timeout=3h"}},
		{"RUN unknown flag", "FROM base\nRUN --network=none true", []string{"line 2: RUN: unknown flag --network"}},
		{"RUN flag without value", "FROM base\nRUN --timeout true", []string{"line 2: RUN: flag"}},
		{"RUN flag twice", "FROM base\nRUN --timeout=1s --timeout=2s true", []string{"line 2: RUN: flag --timeout given twice"}},
		{"ENV without pair", "FROM base\nENV", []string{"line 2: ENV needs at least one key=value"}},
		{"ENV legacy form", "FROM base\nENV A 1", []string{`line 2: ENV: "A" is not key=value`}},
		{"ENV bad key", "FROM base\nENV 1A=x", []string{`line 2: ENV: "1A=x" is not key=value`}},
		{"ENV unterminated quote", "FROM base\nENV A=\"x", []string{"line 2: ENV: unterminated \" quote"}},
		{"WORKDIR two paths", "FROM base\nWORKDIR a b", []string{"line 2: WORKDIR takes one path"}},
		{"USER bad", "FROM base\nUSER Root!", []string{`line 2: USER: "Root!" is not a user name`}},
		{"USER empty", "FROM base\nUSER", []string{`line 2: USER: "" is not a user name`}},
		{"COPY one path", "FROM base\nCOPY a", []string{"line 2: COPY: takes a source and a destination, got 1"}},
		{"COPY absolute source", "FROM base\nCOPY /etc/passwd /x", []string{`line 2: COPY: source "/etc/passwd": must be relative`}},
		{"COPY dot-dot source", "FROM base\nCOPY a/../../x /x", []string{`line 2: COPY: source "a/../../x": must not contain ".."`}},
		{"COPY bad chmod", "FROM base\nCOPY --chmod=rwx a /a", []string{"line 2: COPY: --chmod=rwx: want an octal mode"}},
		{"COPY bad chown", "FROM base\nCOPY --chown=a:b:c a /a", []string{"line 2: COPY: --chown=a:b:c"}},
		{"COPY unknown flag", "FROM base\nCOPY --from=x a /a", []string{"line 2: COPY: unknown flag --from"}},
		{"START empty", "FROM base\nSTART", []string{"line 2: START needs a command"}},
		{"START twice", "FROM base\nSTART a\nSTART b", []string{"line 3: START appears twice (first on line 2)"}},
		{"HEALTHCHECK twice", "FROM base\nHEALTHCHECK a\nHEALTHCHECK b", []string{"line 3: HEALTHCHECK appears twice (first on line 2)"}},
		{"HEALTHCHECK no command", "FROM base\nHEALTHCHECK --retries=3", []string{"line 2: HEALTHCHECK: needs a command"}},
		{"HEALTHCHECK bad retries", "FROM base\nHEALTHCHECK --retries=0 true", []string{"line 2: HEALTHCHECK: --retries=0"}},
		{"HEALTHCHECK tiny interval", "FROM base\nHEALTHCHECK --interval=1ms true", []string{"line 2: HEALTHCHECK: --interval=1ms"}},
		{"continuation at the end", "FROM base\nRUN echo \\\n", []string{"line 2: the instruction ends with a continuation backslash"}},
		{"line numbers count continuations", "FROM base\nRUN a \\\n b\nBOGUS", []string{`line 4: unknown instruction "BOGUS"`}},
		{"several errors, in line order", "FROM base\nUSER X\nRUN\nENV =", []string{"line 2: USER", "line 3: RUN", "line 4: ENV"}},
		{"NUL byte", "FROM base\x00", []string{"recipe: the recipe contains a NUL byte"}},
		{"too big", "FROM base\n" + strings.Repeat("#", MaxBytes), []string{"recipe: the recipe is"}},
		{"too many instructions", "FROM base\n" + strings.Repeat("RUN true\n", MaxInstructions), []string{"recipe: the recipe has 501 instructions"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse(tc.src)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want errors %q", tc.src, r, tc.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T %v is not Errors", err, err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("errors = %q, want %d: %q", err, len(tc.want), tc.want)
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tc.want[i][:strings.Index(tc.want[i], ":")+1]) || !strings.Contains(e.Error(), tc.want[i][strings.Index(tc.want[i], ":")+2:]) {
					t.Errorf("error %d = %q, want %q", i, e.Error(), tc.want[i])
				}
			}
		})
	}
}

func TestErrorsAreCapped(t *testing.T) {
	src := "FROM base\n" + strings.Repeat("BOGUS\n", 100)
	_, err := Parse(src)
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != maxErrors {
		t.Fatalf("got %d errors (%v), want %d", len(errs), err, maxErrors)
	}
}

// sameRecipe compares two recipes but their line numbers and texts.
func sameRecipe(a, b *Recipe) bool {
	norm := func(r *Recipe) Recipe {
		c := *r
		c.FromLine, c.StartLine = 0, 0
		if r.StartLine != 0 {
			c.StartLine = 1
		}
		c.Steps = nil
		for _, s := range r.Steps {
			s.Line, s.Text = 0, ""
			c.Steps = append(c.Steps, s)
		}
		if r.Healthcheck != nil {
			h := *r.Healthcheck
			h.Line = 0
			c.Healthcheck = &h
		}
		return c
	}
	return reflect.DeepEqual(norm(a), norm(b))
}
