// Package pki is the platform's internal certificate authority: the root
// of the mutual TLS between the control plane and its host agents.
//
// The CA is created at the first start of the control plane and kept in
// PostgreSQL (table internal_ca, one row): its certificate in PEM, its
// ECDSA P-256 private key sealed with AES-256-GCM under a key derived from
// the server secret (auth.FieldCipher, purpose "pki-ca-key", bound to the
// certificate's SHA-256 so the key cannot be paired with another
// certificate). A database dump alone does not yield the key. Several
// replicas that start together over one database each make a candidate and
// insert it under the row's primary key (ON CONFLICT DO NOTHING); every
// one of them then reads the row back, so all end with the one CA that won.
//
// The CA issues two kinds of certificates:
//
//   - a host's server certificate (IssueHost), from the agent's CSR (its
//     private key never leaves the host) for the address the administrator
//     DECLARED on the host record: the CSR's subject and SANs, and what the
//     agent says its address is, are ignored, so a host cannot obtain a
//     certificate for another host's name. Short-lived (HostCertTTL, 30
//     days), renewed through the heartbeat's CSR.
//   - the control plane's client certificate (ClientCert: CN
//     capsule-control-plane, extended key usage client auth), which the
//     agents require. ClientCert holds the current certificate in an
//     atomic pointer and replaces it, during a TLS handshake, once less
//     than a third of its lifetime remains: it rotates before expiry
//     without a restart.
//
// AgentClientTLS builds the tls.Config of agentclient.Endpoint.TLS: the CA
// as the only root (the agent's certificate must name the address the
// control plane dials, which is the declared one) and the rotating client
// certificate.
//
// Every time comes from an injectable clock (Options.Now), so issuance,
// expiry and rotation are tested without waiting.
package pki
