package sandbox

// SetCrashHook sets the hook called at each crash point (tests only).
func SetCrashHook(f func(point string)) { crashHook = f }
