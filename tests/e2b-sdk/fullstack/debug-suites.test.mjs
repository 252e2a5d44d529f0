// The debug-mode suites, run again against real sandboxes of `capsule
// serve`: every command, PTY, watch, leak and file test goes through the
// control plane, the traffic proxy, the host agent and a VM (raw envd
// requests through envdFetch, with E2B's routing headers and the token). helpers.mjs switches to a
// real `base` sandbox per file when CAPSULE_URL is set.
import '../commands.test.mjs'
import '../pty.test.mjs'
import '../watch.test.mjs'
import '../leaks.test.mjs'
import '../files.test.mjs'
