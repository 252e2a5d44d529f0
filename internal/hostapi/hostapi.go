// Package hostapi is the contract between a host agent and the control plane
// in the agent → control plane direction: registration with a one-time
// token, refresh of the agent's credentials and the heartbeat. (The other
// direction, control plane → agent, is the hostagent.v1 Connect service in
// proto/hostagent.)
//
// The calls are JSON over HTTPS on the control plane's API listener, under
// /v1/hosts/… (documented in the OpenAPI document with the other routes):
//
//	POST /v1/hosts/register   RegisterRequest  → 201 RegisterResponse
//	POST /v1/hosts/refresh    RefreshRequest   → 200 Credentials
//	POST /v1/hosts/heartbeat  Heartbeat        → 200 HeartbeatResponse
//
// register and refresh authenticate by the token in their body; heartbeat by
// "Authorization: Bearer <access token>" (the host JWT). Errors are the API's
// JSON error body ({"code":…,"message":…}); the status is what an agent acts
// on:
//
//	401  the access token expired or is invalid → refresh; on refresh, the
//	     refresh token is unknown, expired or revoked → the agent cannot go on
//	     (it pauses its sandboxes and waits for a new registration token)
//	403  the token is valid but the host may not do this (e.g. it is offline)
//	404  the host record was deleted → the agent destroys its sandboxes and exits
//	     (the heartbeat says so: a deleted host's refresh tokens are gone
//	     with it, so a refresh answers 401)
//	409  the registration token was already used
//	400  the request is malformed (e.g. a bad CSR); nothing was consumed
//
// The other direction is mutual TLS. The agent serves hostagent.v1 (and
// its traffic proxy) over HTTPS with the server certificate it received
// here, and requires a client certificate that chains to the internal CA,
// carries the client-auth extended key usage and has the common name
// ControlPlaneCommonName: that certificate is the control plane's
// authentication (no bearer token). CA is a PEM bundle: while the CA
// rotates it holds the old and the new certificate, and the agent trusts
// every certificate in it.
//
// Both sides import this package: the control plane's handlers
// (internal/api) and the agent's registration client (internal/agentreg).
// It imports nothing of Capsule's.
package hostapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Paths of the calls, relative to the control plane's base URL.
const (
	PathRegister  = "/v1/hosts/register"
	PathRefresh   = "/v1/hosts/refresh"
	PathHeartbeat = "/v1/hosts/heartbeat"
)

// Lifetimes of the credentials the control plane issues.
const (
	AccessTokenTTL  = 7 * 24 * time.Hour
	RefreshTokenTTL = 60 * 24 * time.Hour
	// HeartbeatInterval is how often an agent beats unless the control
	// plane answers another interval.
	HeartbeatInterval = 15 * time.Second
	// UnreachableAfter is how long without a heartbeat makes a host
	// unreachable and its sandboxes missing.
	UnreachableAfter = 90 * time.Second
	// MissedBeatsBeforePause is how many heartbeats in a row that do not
	// reach the control plane make an agent pause its running sandboxes.
	MissedBeatsBeforePause = 3
)

// ControlPlaneCommonName is the subject common name of the control plane's
// client certificate; an agent refuses a client certificate with another.
const ControlPlaneCommonName = "capsule-control-plane"

// RegisterRequest is what an agent says of itself when it registers with a
// one-time token. Address is what the agent claims; the control plane dials
// (and certifies) the address the administrator declared on the host
// record, never this one.
type RegisterRequest struct {
	Token    string `json:"token"`
	Arch     string `json:"arch"`
	VCPUs    int32  `json:"vcpus"`
	MemoryMB int64  `json:"memory_mb"`
	DiskMB   int64  `json:"disk_mb"`
	Address  string `json:"address"`
	Version  string `json:"version"`
	// CSR is a PEM "CERTIFICATE REQUEST" for the agent's server key (the
	// private key never leaves the host).
	CSR string `json:"csr"`
}

// Credentials are a host's tokens. The refresh token rotates: each refresh
// returns a new one and revokes the old (the new one is stored before the
// old is revoked, so a crash between the two never locks a host out); a
// revoked refresh token presented again revokes its whole family.
//
// An agent stores new credentials durably before it uses them. An agent
// that dies after the control plane answered a refresh but before it
// stored the answer comes back with the previous refresh token: the
// control plane accepts that token once more as long as nothing of the
// new credentials has been used (a heartbeat with the new access token or
// a refresh with the new refresh token revokes it for good); otherwise it
// is a reuse and the host needs a new registration token.
type Credentials struct {
	HostID                string    `json:"host_id"`
	AccessToken           string    `json:"access_token"`
	AccessTokenExpiresAt  time.Time `json:"access_token_expires_at"`
	RefreshToken          string    `json:"refresh_token"`
	RefreshTokenExpiresAt time.Time `json:"refresh_token_expires_at"`
}

// RegisterResponse completes a registration.
type RegisterResponse struct {
	Credentials
	// Address is the address the control plane will dial (the declared
	// one); the agent must listen there.
	Address string `json:"address"`
	// Certificate is the PEM chain of the agent's server certificate,
	// issued for Address by the platform's internal CA.
	Certificate string `json:"certificate"`
	// CA is the PEM of the internal CA: the agent verifies the control
	// plane's client certificate against it.
	CA string `json:"ca"`
}

// RefreshRequest exchanges a refresh token for new credentials.
type RefreshRequest struct {
	RefreshToken string `json:"refresh_token"`
}

// Resources are amounts of one kind of resource.
type Resources struct {
	VCPUs    int32 `json:"vcpus"`
	MemoryMB int64 `json:"memory_mb"`
	DiskMB   int64 `json:"disk_mb"`
}

// Heartbeat is an agent's periodic report.
type Heartbeat struct {
	Version string `json:"version"`
	// Total is what the host offers to sandboxes; Used what its sandboxes
	// hold now.
	Total Resources `json:"total"`
	Used  Resources `json:"used"`
	// MaxVCPUs, when above 0, is the vCPU capacity the host declares (its
	// agent's -max-vcpus); the scheduler places no more than that, and
	// exactly that whatever its overcommit ratio. Total.VCPUs stays the
	// machine's CPUs.
	MaxVCPUs int32 `json:"max_vcpus,omitempty"`
	// Running, Paused and Sandboxes count the host's sandboxes.
	Running   int32 `json:"running"`
	Paused    int32 `json:"paused"`
	Sandboxes int32 `json:"sandboxes"`
	// CSR, when set, asks for a new server certificate (the agent sends
	// one when its certificate nears expiry).
	CSR string `json:"csr,omitempty"`
}

// HeartbeatResponse answers a heartbeat.
type HeartbeatResponse struct {
	// Status is the host record's status (online, draining…).
	Status string `json:"status"`
	// IntervalSeconds is when to beat next.
	IntervalSeconds int `json:"interval_seconds"`
	// Certificate and CA are set when the heartbeat carried a CSR, or
	// when the CA rotated.
	Certificate string `json:"certificate,omitempty"`
	CA          string `json:"ca,omitempty"`
}

// VerifyControlPlane checks, on the agent's side of a mutual TLS
// connection, that the client presented a certificate the TLS layer
// verified against the internal CA, that it is meant for client
// authentication (the client-auth extended key usage, explicitly: a
// certificate without extended key usages is refused too) and that it is
// the control plane's (ControlPlaneCommonName).
func VerifyControlPlane(cs *tls.ConnectionState) error {
	if cs == nil {
		return errors.New("not a TLS connection")
	}
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return errors.New("no verified client certificate")
	}
	leaf := cs.VerifiedChains[0][0]
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return errors.New("the client certificate is not for client authentication")
	}
	if leaf.Subject.CommonName != ControlPlaneCommonName {
		return fmt.Errorf("client certificate of %q, not of the control plane", leaf.Subject.CommonName)
	}
	return nil
}
