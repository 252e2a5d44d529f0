package hostapi

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
)

func TestVerifyControlPlane(t *testing.T) {
	cert := func(cn string, usage ...x509.ExtKeyUsage) *tls.ConnectionState {
		leaf := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: usage}
		return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}
	}
	for _, tc := range []struct {
		name string
		cs   *tls.ConnectionState
		ok   bool
	}{
		{"the control plane", cert(ControlPlaneCommonName, x509.ExtKeyUsageClientAuth), true},
		{"not TLS", nil, false},
		{"no verified chain", &tls.ConnectionState{}, false},
		{"server usage only", cert(ControlPlaneCommonName, x509.ExtKeyUsageServerAuth), false},
		{"no extended usage", cert(ControlPlaneCommonName), false},
		{"another name", cert("capsule-host", x509.ExtKeyUsageClientAuth), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifyControlPlane(tc.cs); (err == nil) != tc.ok {
				t.Fatalf("VerifyControlPlane: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
