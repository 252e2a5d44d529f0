package agentreg

// SetBeforeStore sets the hook that runs between a refresh's answer and
// its storage (a crash there, in tests).
func SetBeforeStore(cfg *Config, f func() error) { cfg.beforeStore = f }
