// The debug-mode suites whose tests only use the SDK (no raw requests to
// a local envd), run again against real sandboxes of `capsule serve`:
// every command, PTY, watch and leak test goes through the control plane,
// the traffic proxy, the host agent and a VM. helpers.mjs switches to a
// real `base` sandbox per file when CAPSULE_URL is set.
import '../commands.test.mjs'
import '../pty.test.mjs'
import '../watch.test.mjs'
import '../leaks.test.mjs'
