package envd

// PLACEHOLDER: replaced by the process implementation.

import "github.com/capsulehq/capsule/gen/envd/process/processconnect"

type processService struct {
	processconnect.UnimplementedProcessHandler
	s *Server
}

type processManager struct{}

func newProcessManager(s *Server) *processManager { return &processManager{} }
func (m *processManager) killAll()                 {}
