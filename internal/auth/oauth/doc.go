// Package oauth implements login through OAuth 2.0 identity providers
// (GitHub first) as storage-free building blocks: a provider registry, the
// GitHub provider, callback parsing and the CSRF state cookie. Account
// creation and linking (race-safe registration that retries a unique
// violation as a login) belong to the service layer that uses them.
//
// # Flow
//
//	GET /v1/auth/oauth/{name}/login
//	    p, err := registry.Get(name)             // 404 on ErrUnknownProvider
//	    state, err := states.SetWith(w, name, data) // signed cookie (+ data)
//	    redirect to p.AuthCodeURL(state)
//	GET /v1/auth/oauth/{name}/callback
//	    code, _, err := oauth.ParseCallback(r)   // ErrAccessDenied, ErrInvalidCode
//	    data, err := states.VerifyWith(w, r, name) // ErrState…, before Exchange
//	    profile, err := p.Exchange(ctx, code)     // ErrInvalidCode, ErrNoVerifiedEmail, ErrProvider
//	    link by (name, profile.ProviderUserID); else by profile.Email only
//	    if profile.EmailVerified; else create the user
//
// Verify must be called even when ParseCallback reports an error, so the
// cookie is consumed and deleted. The data that SetWith binds to a state
// (where to go afterwards, which signed-in user started a linking flow)
// is covered by the cookie's MAC, so it cannot be altered or moved to
// another state; it is not secret.
//
// Package oauthtest is a local fake GitHub for tests.
//
// # GitHub
//
// GitHub is configured with its three base URLs (authorization, token,
// REST API) so the tests run it against a local fake server, and so it can
// serve GitHub Enterprise. The token endpoint's quirk of reporting errors
// with status 200 is handled. The profile's ID is GitHub's numeric user ID
// (logins can be renamed and reused). /user carries no e-mail
// verification flag, so the address always comes from /user/emails: the
// primary address if verified, else the public one if verified, else any
// verified one; with none, Exchange fails with ErrNoVerifiedEmail rather
// than return an address nobody proved to own (linking on an unverified
// address would let anyone take over an account by adding its address to
// their GitHub profile). The access token is used for two calls and
// dropped; it is never stored or returned.
//
// The code exchange is hand-written rather than golang.org/x/oauth2's
// Config.Exchange. Capsule uses one grant (authorization code), once per
// login, without refresh tokens or a TokenSource; what surrounds the POST
// is GitHub-specific and would stay with the library: GitHub answers JSON
// only with Accept: application/json (x/oauth2 sets no Accept, so the
// client would need a header-setting transport), reports errors with
// status 200, and its error codes must be sorted into ErrInvalidCode (a
// refused or replayed code: the user's) and ErrProvider (our
// configuration), which x/oauth2 hands back as *oauth2.RetrieveError to
// unpack the same way. x/oauth2 also accepts form-encoded token answers,
// which this code refuses. The exchange is about sixty lines, and
// TestGitHubTokenResponses and TestGitHubExchangeErrors pin every answer
// of the token endpoint it handles.
//
// # State cookie and threat model
//
// The state defends against login CSRF: an attacker completing the flow
// with their own code in the victim's browser, who would then be signed
// in as the attacker. Set draws 256 random bits, stores them in a cookie
// with their expiry and an HMAC-SHA256 (key derived from the server
// secret, bound to the provider name) and returns them for the
// authorization URL; Verify wants the query's state to equal the
// cookie's (constant time), the MAC to be right (so the expiry cannot be
// extended and nothing can be forged without the secret), the cookie to be
// unexpired (10 minutes by default) and the state unused; then it deletes
// the cookie. A per-process record of used states refuses replays of a
// captured callback (bounded; the oldest records are dropped first, and
// their cookies were deleted anyway).
//
// The cookie is HttpOnly (scripts cannot read it), Secure (unless
// configured for plain-HTTP development), SameSite=Lax (sent on the
// provider's top-level redirect back, not on cross-site subrequests) and
// scoped to the OAuth routes' path. Cookie tossing: sandboxes serve
// arbitrary user content under {port}-{id}.{domain}; if the control plane
// is served under the same registrable domain, a sandbox page could plant
// a state cookie for it. Verify refuses requests carrying two state
// cookies, but a planted cookie alone still passes. Deployments that
// serve sandboxes under the API's domain should set CookiePath "/", which
// switches to a "__Host-" cookie that browsers never accept from another
// host.
package oauth
