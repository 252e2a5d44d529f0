package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

type credentials struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	Name     string `json:"name,omitempty"`
}

type signupJSON struct {
	credentials
	// Invitation is a team invitation's token (required when the server's
	// sign-up policy is "invite").
	Invitation string `json:"invitation,omitempty"`
}

type userJSON struct {
	ID      string `json:"id"`
	Email   string `json:"email"`
	Name    string `json:"name"`
	IsAdmin bool   `json:"is_admin"`
}

type teamJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Slug string `json:"slug"`
	Role string `json:"role,omitempty"`
}

type accountJSON struct {
	User userJSON  `json:"user"`
	Team *teamJSON `json:"team,omitempty"`
}

func accountOf(a service.Account) accountJSON {
	out := accountJSON{User: userJSON{
		ID: wireid.Format(wireid.User, a.User.ID), Email: a.User.Email, Name: a.User.Name, IsAdmin: a.User.IsAdmin,
	}}
	if !a.Team.ID.IsZero() {
		out.Team = &teamJSON{ID: a.Team.ID.String(), Name: a.Team.Name, Slug: a.Team.Slug, Role: a.Role}
	}
	return out
}

func (s *Server) signup(w http.ResponseWriter, r *http.Request) {
	var c signupJSON
	if err := decode(r, w, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	a, err := s.cfg.Accounts.Signup(r.Context(), service.Signup{Email: c.Email, Password: c.Password, Name: c.Name, Invitation: c.Invitation})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, accountOf(a))
}

type sessionJSON struct {
	accountJSON
	// Token is absent when the session is the dashboard's cookie (a team
	// switch then sets the new one).
	Token     string    `json:"token,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var c credentials
	if err := decode(r, w, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	if ok, wait := s.loginEmail.Allow(auth.EmailKey(c.Email)); !ok {
		auth.WriteTooManyRequests(w, wait)
		return
	}
	sess, err := s.cfg.Accounts.Login(r.Context(), c.Email, c.Password)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sessionJSON{accountJSON: accountOf(sess.Account), Token: sess.Token, ExpiresAt: sess.ExpiresAt})
}

type apiKeyJSON struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	// Key is the whole key: only in the answer that created it.
	Key string `json:"key,omitempty"`
}

func apiKeyOf(k db.TeamAPIKey) apiKeyJSON {
	out := apiKeyJSON{ID: wireid.Format(wireid.APIKey, k.ID), Name: k.Name, Prefix: k.Prefix, CreatedAt: k.CreatedAt}
	if k.LastUsedAt.Valid {
		t := k.LastUsedAt.Time
		out.LastUsedAt = &t
	}
	return out
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, p service.Principal) {
	ks, err := s.cfg.Accounts.ListAPIKeys(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]apiKeyJSON, len(ks))
	for i, k := range ks {
		out[i] = apiKeyOf(k)
	}
	writeJSON(w, http.StatusOK, map[string]any{"api_keys": out})
}

type createKeyJSON struct {
	Name string `json:"name"`
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req createKeyJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	k, err := s.cfg.Accounts.CreateAPIKey(r.Context(), p, req.Name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := apiKeyOf(k.Key)
	out.Key = k.Plaintext
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := wireid.ParseAPIKeyID(r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "API key not found"})
		return
	}
	if err := s.cfg.Accounts.RevokeAPIKey(r.Context(), p, id); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
