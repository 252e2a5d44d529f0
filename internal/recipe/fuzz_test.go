package recipe

import (
	"errors"
	"path"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics; an error is Errors naming lines that
// exist, in order; a recipe is well formed (absolute directories, valid
// steps) and survives Format and a second Parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add(full)
	f.Add("FROM base\nRUN echo \\\n  hi\n")
	f.Add("FROM base\nENV A=\"x y\" B='z' C=a\\ b\nCOPY --chown=u:g \"a b\" c/\n")
	f.Add("FROM base\nHEALTHCHECK --interval=1s --retries=2 true\nSTART sleep 9")
	f.Add("RUN x\nFROM\n\\")
	f.Fuzz(func(t *testing.T, src string) {
		r, err := Parse(src)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 || len(errs) > maxErrors {
				t.Fatalf("error %T %v: want 1..%d Errors", err, err, maxErrors)
			}
			lines := strings.Count(src, "\n") + 1
			for i, e := range errs {
				if e.Line < 0 || e.Line > lines || (i > 0 && e.Line < errs[i-1].Line) {
					t.Fatalf("error %d names line %d of %d (errors %v)", i, e.Line, lines, err)
				}
			}
			return
		}
		if r.From == "" || r.FromLine < 1 {
			t.Fatalf("no FROM in an accepted recipe: %+v", r)
		}
		last := r.FromLine
		for _, s := range r.Steps {
			if s.Line <= last {
				t.Fatalf("step on line %d after line %d", s.Line, last)
			}
			last = s.Line
			if !path.IsAbs(s.Ctx.Workdir) || s.Ctx.User == "" {
				t.Fatalf("step %+v: context without an absolute workdir and a user", s)
			}
			switch s.Kind {
			case Run:
				if s.Cmd == "" || s.Timeout <= 0 {
					t.Fatalf("RUN %+v", s)
				}
			case Copy:
				if !path.IsAbs(s.Path) || path.IsAbs(s.Src) || strings.Contains("/"+s.Src+"/", "/../") {
					t.Fatalf("COPY %+v", s)
				}
			case Workdir:
				if !path.IsAbs(s.Path) {
					t.Fatalf("WORKDIR %+v", s)
				}
			case User, Env:
			default:
				t.Fatalf("step of kind %q", s.Kind)
			}
		}
		again, err := Parse(Format(r))
		if err != nil {
			t.Fatalf("Parse(Format(r)): %v\n%s", err, Format(r))
		}
		if !sameRecipe(r, again) {
			t.Fatalf("Format changed the recipe:\n%q\n%+v\n%+v", Format(r), r, again)
		}
	})
}
