// Package capsule is the Go SDK of Capsule, the self-hosted microVM sandbox
// platform: create sandboxes, run commands in them (streamed, with stdin
// and signals, or in a terminal), move files in and out, pause and resume
// them, snapshot them, and manage API keys and teams.
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
// # Errors
//
// A refusal of the platform is an *APIError with the HTTP status, the
// platform's message and the request ID. Test its class with errors.Is
// against ErrNotFound, ErrConflict, ErrInvalid, ErrUnauthorized,
// ErrForbidden, ErrQuota, ErrUnavailable and ErrInsufficientStorage.
// Another team's sandbox is ErrNotFound, as one that never existed.
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
