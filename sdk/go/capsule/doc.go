// Package capsule is the Go SDK of Capsule, the self-hosted microVM sandbox
// platform: create sandboxes, run commands in them (streamed, with stdin
// and signals, or in a terminal), move files in and out, pause and resume
// them, snapshot them, build templates, and manage API keys, teams and
// (for platform admins) the platform.
//
// A client needs the platform's API URL and a team API key, from the
// arguments or from the environment (CAPSULE_API_URL, CAPSULE_API_KEY):
//
//	c, err := capsule.New("http://localhost:8080", capsule.WithAPIKey(key))
//	sbx, err := c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "base"})
//	defer c.Sandboxes.Kill(context.WithoutCancel(ctx), sbx.ID)
//	res, err := c.Commands.Run(ctx, sbx.ID, "echo hello", capsule.RunOptions{
//		OnStdout: func(b []byte) { os.Stdout.Write(b) },
//	})
//
// Every call takes a context: cancelling it abandons the call (a running
// command started by Run or Start is killed when its context ends).
//
// # Terminals
//
// Commands.StartPTY runs a shell on a pseudo-terminal. With
// PTYOptions.Keep the shell outlives its session (a closed program, a
// broken network) for that long, and Commands.AttachPTY takes it back by
// its PID with the output written meanwhile:
//
//	term, err := c.Commands.StartPTY(ctx, sbx.ID, capsule.PTYOptions{Keep: 10 * time.Minute})
//	pid := term.PID
//	// … later, from another process:
//	term, err = c.Commands.AttachPTY(ctx, sbx.ID, pid, capsule.CommandOptions{OnStdout: show})
//
// # Teams and administration
//
// Client.Teams manages the user's teams (create, rename, delete, and
// Switch, which returns a session token acting in another team), their
// members (added by e-mail address, roles, removal, leaving), invitations,
// user search and the team's audit log. Client.Admin is for platform
// admins: every team (BYOC, deletion), user (disable, enable) and host
// with its team's name, the platform-wide audit log, the platform team's
// sandboxes and the public templates' builds (submitted as
// Templates.Build submits a team's). Both need a user's session token
// (from a login), not a team API key: a key is refused with ErrForbidden,
// as a member's admin call is.
//
// # Paging
//
// A listing that the platform pages (Sandboxes.List, Sandboxes.Logs,
// Teams.AuditLog, the Admin listings) is an iterator: pages are fetched as
// the range loop goes, breaking out of the loop stops fetching, and an
// error ends the loop, yielded once:
//
//	for e, err := range c.Teams.AuditLog(ctx, capsule.AuditLogOptions{}) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(e.CreatedAt, e.ActorName, e.Action)
//	}
//
// # Errors
//
// A refusal of the platform is an *APIError with the HTTP status, the
// platform's message and the request ID. Test its class with errors.Is
// against ErrNotFound, ErrConflict, ErrInvalid, ErrUnauthorized,
// ErrForbidden, ErrQuota, ErrUnavailable and ErrInsufficientStorage.
// Another team's sandbox (or team, member, invitation or build) is
// ErrNotFound, as one that never existed.
//
// # Retries
//
// Requests refused with 503 (no capacity, a host unreachable) and with 429
// carrying Retry-After (a rate limit) are retried with exponential back-off
// and jitter, honouring Retry-After, up to WithRetry's limit (3 retries by
// default) and never past the context's deadline. A 429 without
// Retry-After is a quota: retrying would not help, so it is returned at
// once as ErrQuota. Uploads from a plain io.Reader are sent once (their
// body cannot be replayed).
//
// # Wire layer
//
// The HTTP client and models under internal/wire are generated from the
// platform's OpenAPI document (internal/api/openapi.yaml) by oapi-codegen;
// `make generate` regenerates them and a test fails when they drift. This
// package wraps them in a stable, documented API.
package capsule
