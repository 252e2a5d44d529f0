package capsule

import (
	"context"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// APIKey is a team API key. Key is set only in the answer that creates it:
// the platform keeps only a hash.
type APIKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Prefix     string    `json:"prefix"`
	Key        string    `json:"key,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

func keyFrom(w wire.ApiKey) APIKey {
	return APIKey{ID: w.Id, Name: w.Name, Prefix: w.Prefix, Key: deref(w.Key), CreatedAt: w.CreatedAt, LastUsedAt: deref(w.LastUsedAt)}
}

// KeyService manages the team's API keys (Client.Keys).
type KeyService struct{ c *Client }

// Create makes a key called name; the answer is the only time its Key is
// readable.
func (s *KeyService) Create(ctx context.Context, name string) (APIKey, error) {
	var out wire.ApiKey
	resp, err := s.c.wire.CreateApiKey(ctx, wire.CreateApiKeyRequest{Name: name})
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return APIKey{}, err
	}
	return keyFrom(out), nil
}

// List returns the team's live keys (without their secret).
func (s *KeyService) List(ctx context.Context) ([]APIKey, error) {
	var out wire.ApiKeyList
	resp, err := s.c.wire.ListApiKeys(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	keys := make([]APIKey, len(out.ApiKeys))
	for i, w := range out.ApiKeys {
		keys[i] = keyFrom(w)
	}
	return keys, nil
}

// Revoke makes the key id stop working at once.
func (s *KeyService) Revoke(ctx context.Context, id string) error {
	resp, err := s.c.wire.RevokeApiKey(ctx, id)
	return decode(resp, err, http.StatusNoContent, nil)
}

// Team is a team of the user.
type Team struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Slug string `json:"slug"`
	// Role is the user's: owner, admin or member.
	Role string `json:"role"`
	// BYOC: the team brings its own sandbox hosts.
	BYOC      bool      `json:"is_byoc"`
	CreatedAt time.Time `json:"created_at"`
	JoinedAt  time.Time `json:"joined_at"`
}

// TeamService reads the user's teams (Client.Teams; needs a session
// token, not an API key).
type TeamService struct{ c *Client }

// List returns the user's teams, oldest membership first.
func (s *TeamService) List(ctx context.Context) ([]Team, error) {
	var out wire.TeamList
	resp, err := s.c.wire.ListTeams(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	teams := make([]Team, len(out.Teams))
	for i, w := range out.Teams {
		teams[i] = Team{ID: w.Id, Name: w.Name, Slug: w.Slug, Role: string(w.Role), BYOC: w.IsByoc, CreatedAt: w.CreatedAt, JoinedAt: w.JoinedAt}
	}
	return teams, nil
}
