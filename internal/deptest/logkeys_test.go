package deptest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// forbiddenLogKeys are log keys with another name in the tree (STYLE.md:
// one key name per concept), and the name to use instead.
var forbiddenLogKeys = map[string]string{
	"error":       "err",
	"id":          "the noun it names: sandbox, team, user, template, image, machine …",
	"sandbox_id":  "sandbox",
	"sandboxID":   "sandbox",
	"sandbox-id":  "sandbox",
	"sbx":         "sandbox",
	"team_id":     "team",
	"teamID":      "team",
	"host_id":     "host",
	"hostID":      "host",
	"user_id":     "user",
	"userID":      "user",
	"template_id": "template",
	"templateID":  "template",
	"requestID":   "request_id",
	"request-id":  "request_id",
	"req_id":      "request_id",
	"reqID":       "request_id",
}

// logMethods are the *slog.Logger methods (and With) whose arguments after
// the message are key-value pairs; the value is the index of the first
// argument after the message (With has none).
var logMethods = map[string]int{
	"Debug": 1, "Info": 1, "Warn": 1, "Error": 1,
	"DebugContext": 2, "InfoContext": 2, "WarnContext": 2, "ErrorContext": 2,
	"Log": 3, "LogAttrs": 3, "With": 0,
}

// slogAttrFuncs are log/slog's attribute constructors (first argument: the
// key).
var slogAttrFuncs = map[string]bool{
	"String": true, "Int": true, "Int64": true, "Uint64": true, "Float64": true,
	"Bool": true, "Time": true, "Duration": true, "Any": true, "Group": true,
}

// logKeyViolations returns, for the Go source src, every log key it uses
// that forbiddenLogKeys names, as "file:line: key "k": use …".
//
// It reads syntax, not types: a call of a logMethods method whose receiver
// is not a testing value (t, b, f, tb) counts as a log call, and every
// string literal among its key-value arguments as a key candidate; a call
// slog.String("k", …) (and the other constructors) as the key k.
func logKeyViolations(fset *token.FileSet, name string, src any) ([]string, error) {
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var out []string
	report := func(lit *ast.BasicLit) {
		k, err := strconv.Unquote(lit.Value)
		if err != nil {
			return
		}
		if use, bad := forbiddenLogKeys[k]; bad {
			out = append(out, fmt.Sprintf("%s: log key %q: use %s", fset.Position(lit.Pos()), k, use))
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		recv, _ := sel.X.(*ast.Ident)
		if recv != nil && recv.Name == "slog" && slogAttrFuncs[sel.Sel.Name] {
			if len(call.Args) > 0 {
				if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					report(lit)
				}
			}
			return true
		}
		first, ok := logMethods[sel.Sel.Name]
		if !ok || recv != nil && (recv.Name == "t" || recv.Name == "b" || recv.Name == "f" || recv.Name == "tb" || recv.Name == "errors") {
			return true
		}
		// Key candidates: string literals in the key positions, where the
		// arguments are key-value pairs (an slog.Attr argument takes one
		// position, so the pairing restarts after it).
		for i := first; i < len(call.Args); i++ {
			lit, ok := call.Args[i].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				continue // an Attr, or a value
			}
			report(lit)
			i++ // its value
		}
		return true
	})
	return out, nil
}

// TestLogKeysAreTheTreesNames walks every Go file of the tree and fails on
// a log call using a key that STYLE.md names otherwise ("error" for "err",
// "sandbox_id" for "sandbox" …), so that one grep finds a concept's lines
// in every package.
func TestLogKeysAreTheTreesNames(t *testing.T) {
	fset := token.NewFileSet()
	var bad []string
	for _, top := range []string{"internal", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			v, err := logKeyViolations(fset, p, nil)
			bad = append(bad, v...)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range bad {
		t.Error(b)
	}
}

// TestLogKeyViolations checks the checker on code that breaks the rule and
// code that does not.
func TestLogKeyViolations(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want []string // the keys reported
	}{
		{"error key", `log.Error("m", "error", err)`, []string{"error"}},
		{"err key", `log.Error("m", "err", err)`, nil},
		{"context call", `log.InfoContext(ctx, "m", "sandbox_id", id, "team_id", tm)`, []string{"sandbox_id", "team_id"}},
		{"message is not a key", `log.InfoContext(ctx, "error", "sandbox", id)`, nil},
		{"value is not a key", `log.Info("m", "kind", "id")`, nil},
		{"after an Attr", `log.Info("m", slog.Int("n", 1), "id", x)`, []string{"id"}},
		{"attr constructor", `log.Info("m", slog.String("error", s))`, []string{"error"}},
		{"With", `l := log.With("sbx", id); _ = l`, []string{"sbx"}},
		{"LogAttrs", `log.LogAttrs(ctx, slog.LevelInfo, "m", slog.Any("requestID", r))`, []string{"requestID"}},
		{"testing calls are not logs", `t.Error("id", "error")`, nil},
		{"fmt is not a log", `fmt.Println("m", "error", err)`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "package p\nfunc f() {\n" + tc.body + "\n}\n"
			got, err := logKeyViolations(token.NewFileSet(), "p.go", src)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("want violations for %q, got %q", tc.want, got)
			}
			for i, k := range tc.want {
				if !strings.Contains(got[i], strconv.Quote(k)) {
					t.Errorf("violation %d: want key %q, got %q", i, k, got[i])
				}
			}
		})
	}
}
