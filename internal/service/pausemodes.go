package service

// How a sandbox is paused and how it runs again (E2B's pause with
// memory: false, connect with onResume: 'reboot').
//
// A pause keeps a sandbox's memory by default: the resume restores it,
// processes and all. A filesystem-only pause (PauseOptions.FilesystemOnly)
// syncs the guest's file systems and stops its machine, keeping its disk
// only; the resume boots it cold from that disk (the agent knows which a
// paused sandbox has). A cold resume (ResumeOptions.Cold) boots a paused
// sandbox from its disk even when its memory was kept, and the host drops
// that memory. Either way the sandbox keeps its ID, envd access token,
// files, network rules and timeout; the record goes through the same
// transitions (running → pausing → paused → resuming → running) and audit
// actions (sandbox.pause, sandbox.resume).

// PauseOptions says how PauseWith keeps a sandbox.
type PauseOptions struct {
	// FilesystemOnly keeps the disk only: no memory is saved, and the
	// resume boots the sandbox cold.
	FilesystemOnly bool
}

// ResumeOptions says how ResumeWith and ConnectWith start a paused
// sandbox again.
type ResumeOptions struct {
	// Cold boots it from its disk, dropping its memory if it was kept.
	Cold bool
}
