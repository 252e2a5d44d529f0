package sandbox

import "github.com/capsulehq/capsule/internal/phase"

// Phase is one step of a create and how long it took. A create's phases,
// in order: "prepare" (template, admission, the sandbox directory, the
// disk overlay, the first record), "slot" (a network slot with its rules
// and TAP), "restore" or "boot" (the VMM until the guest runs), "envd"
// (until envd answers /health), "init" (envd's /init) and "commit" (the
// running record written durably). Info.Phases carries them to the agent,
// which returns them to the control plane (Server-Timing).
type Phase = phase.Phase
