package capsule

import (
	"fmt"
	"iter"
	"net/mail"
	"time"

	openapi_types "github.com/oapi-codegen/runtime/types"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// AuditEvent is an entry of an audit log: who did what to which resource.
type AuditEvent struct {
	ID string `json:"id"`
	// TeamID is the team whose log holds it (set in the platform-wide
	// log of AdminService.AuditLog only).
	TeamID string `json:"team_id,omitempty"`
	// ActorType is "user", "api_key", "system" or "host".
	ActorType string `json:"actor_type"`
	ActorID   string `json:"actor_id"`
	// ActorName is the user's e-mail address or the API key's name.
	ActorName    string `json:"actor_name"`
	ResourceType string `json:"resource_type"`
	ResourceID   string `json:"resource_id"`
	// Action is "<resource>.<verb>" (sandbox.create, team.rename…).
	Action string `json:"action"`
	// Scope is "team" (every member sees it) or "admin" (the team's
	// admins and owners, and platform admins).
	Scope string `json:"scope"`
	// Status is "success", "info", "warning" or "error".
	Status    string         `json:"status"`
	Metadata  map[string]any `json:"metadata"`
	CreatedAt time.Time      `json:"created_at"`
}

// AuditLogOptions filters an audit log.
type AuditLogOptions struct {
	// ResourceTypes keeps events about any of these resource types
	// (sandbox, api_key, member…; empty: all).
	ResourceTypes []string
	// Actions keeps events of any of these actions (sandbox.create…;
	// empty: all).
	Actions []string
	// PageSize is the events per request (0: the server's default).
	PageSize int
}

// words converts a filter list for the wire (nil when empty).
func words(list []string) *[]wire.AuditWord {
	if len(list) == 0 {
		return nil
	}
	w := make([]wire.AuditWord, len(list))
	copy(w, list)
	return &w
}

// paginate iterates over the items of a cursor-paged listing: fetch
// returns a page and the cursor of the next ("" on the last page). Pages
// are fetched as the loop goes; an error ends the iteration (yielded
// once).
func paginate[T any](fetch func(cursor string) ([]T, string, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		cursor := ""
		for {
			items, next, err := fetch(cursor)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, it := range items {
				if !yield(it, nil) {
					return
				}
			}
			if next == "" || len(items) == 0 {
				return
			}
			cursor = next
		}
	}
}

// emailOf checks an e-mail address before it is sent (the wire layer
// refuses to encode a malformed one).
func emailOf(addr string) (openapi_types.Email, error) {
	if _, err := mail.ParseAddress(addr); err != nil {
		return "", fmt.Errorf("%w: e-mail address %q: %v", ErrInvalid, addr, err)
	}
	return openapi_types.Email(addr), nil
}
