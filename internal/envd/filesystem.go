package envd

// PLACEHOLDER: replaced by the filesystem implementation.

import "github.com/capsulehq/capsule/gen/envd/filesystem/filesystemconnect"

type filesystemService struct {
	filesystemconnect.UnimplementedFilesystemHandler
	s *Server
}
