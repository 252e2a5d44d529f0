package sandbox

// crashHook, when set (by tests only: nothing in production code or
// configuration sets it), is called at named points of the lifecycle
// operations. Fault-injection tests set it in an agent process to kill
// that process with SIGKILL at a chosen point.
var crashHook func(point string)

// crashPoint marks a point at which a crash must leave a consistent state.
func crashPoint(point string) {
	if crashHook != nil {
		crashHook(point)
	}
}
