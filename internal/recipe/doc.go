// Package recipe is the language of template builds: a Dockerfile-like
// text that says which template a build starts from, what runs in the
// build sandbox, and how the finished template behaves. Parse turns the
// text into a Recipe, or into Errors that name every bad line, before
// anything runs: a build that is accepted has a recipe that can run.
//
// The instructions, one per line (keywords in any case):
//
//	FROM <template>                      the first instruction, exactly once
//	RUN [--timeout=<duration>] <cmd>     a shell command (/bin/sh -c); non-zero exit fails the build
//	ENV <key>=<value> ...                variables for later steps and for the template's sandboxes
//	WORKDIR <path>                       the directory later steps run in (relative: joins the current one)
//	USER <name>                          the user later steps run as; created if missing, with passwordless sudo
//	COPY [--chown=<u>[:<g>]] [--chmod=<octal>] <src> <dst>
//	                                     from the build's uploaded archive (src relative to its root)
//	START <cmd>                          a process left running in the finished snapshot (at most one)
//	HEALTHCHECK [--interval=<d>] [--timeout=<d>] [--start-period=<d>] [--retries=<n>] <cmd>
//	                                     at most one; with it the build makes a snapshot template
//
// A line ending in a backslash continues on the next one (the backslash
// and the line break are removed, as in a Dockerfile); lines whose first
// non-blank character is # are comments, also inside a continued
// instruction. Durations are Go durations ("90s", "5m") or whole seconds.
// ENV values may be quoted ("a b" or 'a b'; a backslash escapes the next
// character outside single quotes); they are taken literally, never
// expanded.
//
// Steps run as root in / until a USER or WORKDIR says otherwise. The
// last USER, the last WORKDIR and every ENV of the recipe become the
// template's defaults (Recipe.User, Recipe.Workdir, Recipe.Env), which
// every sandbox created from it gets. Each Step carries the user,
// directory and environment it runs with, so a runner needs no state of
// its own.
//
// Why a parser of our own rather than a Dockerfile library: the language
// is smaller (no multi-stage builds, no ARG, no shell-form/exec-form
// split), it has instructions Dockerfiles lack (START), and its errors
// are part of the API: every one names its line.
package recipe
