package envd

// LiveWatchers reports how many directory watchers s holds (streams and
// polling ones), so that tests can check that they are released.
func LiveWatchers(s *Server) int { return s.watchers.count() }
