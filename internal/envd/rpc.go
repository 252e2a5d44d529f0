package envd

import (
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
)

// rpcAccount selects the Linux user of an RPC: the HTTP Basic user name, or
// the default user when the header is absent (spec §5.4). An unknown user is
// CodeUnauthenticated with E2B's message.
func (s *Server) rpcAccount(h http.Header) (*account, error) {
	name, err := basicUser(h)
	if errors.Is(err, errNoBasicUser) {
		name, _ = s.defaults()
	} else if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, err)
	}
	a, err := lookupAccount(name)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
	}
	return a, nil
}

// rpcPath resolves a request path for a user; a bad path is
// CodeInvalidArgument.
func (s *Server) rpcPath(p string, a *account) (string, error) {
	_, workdir := s.defaults()
	abs, err := resolvePath(p, a, workdir)
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return abs, nil
}
