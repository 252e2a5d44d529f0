package testenv_test

import (
	"testing"

	"github.com/capsulehq/capsule/internal/testenv"
)

func TestStepPointsTheEnvironmentAtTheStep(t *testing.T) {
	env := struct{ t *testing.T }{t: t}
	var inside *testing.T
	ok := testenv.Step(&env.t, "step", func(st *testing.T) {
		inside = env.t
		if env.t != st {
			t.Errorf("during the step the environment holds %s, want the step %s", env.t.Name(), st.Name())
		}
	})
	if !ok {
		t.Fatal("a passing step reported failure")
	}
	if inside == t || inside == nil {
		t.Errorf("the environment held the parent during the step")
	}
	if env.t != t {
		t.Errorf("after the step the environment holds %s, want the parent %s", env.t.Name(), t.Name())
	}
}
