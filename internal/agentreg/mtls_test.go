package agentreg_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/hostapi"
)

// serveMTLS serves, with the client's TLSConfig, a handler that answers
// 200 to the control plane (the check internal/agent makes) and 401 to
// anyone else.
func serveMTLS(t *testing.T, c *agentreg.Client) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := hostapi.VerifyControlPlane(r.TLS); err != nil {
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
			_, _ = io.WriteString(w, "ok")
		}),
		TLSConfig: c.TLSConfig(),
		ErrorLog:  newDiscardLogger(), // refused handshakes
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// httpsClient is a client of the agent presenting cert (none when nil).
func httpsClient(ca *testCA, cert *tls.Certificate, now func() time.Time) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	cfg := &tls.Config{RootCAs: pool, Time: now}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: true}}
}

func TestServerMTLS(t *testing.T) {
	e := newEnv(t)
	c := e.registered(t)
	addr := serveMTLS(t, c)
	other := newTestCA(t, "another CA")
	cp := e.ca.controlPlaneCert(t)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{
		{"the control plane's client certificate is accepted", &cp, true},
		{"no client certificate is refused", nil, false},
		{"a certificate of another CA is refused", ptr(other.controlPlaneCert(t)), false},
		{"a server-usage certificate is refused", ptr(e.ca.clientCert(t, hostapi.ControlPlaneCommonName, x509.ExtKeyUsageServerAuth)), false},
		{"a certificate without extended usage is refused", ptr(e.ca.clientCert(t, hostapi.ControlPlaneCommonName)), false},
		{"a client certificate of another name is refused", ptr(e.ca.clientCert(t, "capsule-host-7", x509.ExtKeyUsageClientAuth)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := httpsClient(e.ca, tc.cert, e.clock.Now).Get("https://" + addr + "/")
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
					t.Fatalf("status %d over %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatalf("answered %d; the handshake should have failed", resp.StatusCode)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestCertificateRenewal: once the server certificate has less than a
// third of its lifetime left, a heartbeat carries a CSR, and the issued
// certificate is served from the next handshake on, while a client keeps
// calling, without a restart.
func TestCertificateRenewal(t *testing.T) {
	e := newEnv(t)
	c := e.registered(t)
	addr := serveMTLS(t, c)
	cp := e.ca.controlPlaneCert(t)
	oldSerial := c.ServerCertificate().SerialNumber.String()

	// A client calls continuously, each call on a new connection.
	var (
		mu       sync.Mutex
		served   = map[string]int{}
		failures []error
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	wg.Go(func() {
		for !stop.Load() {
			serial, err := dialServed(t, addr, e.ca, cp, e.clock.Now)
			mu.Lock()
			if err != nil {
				failures = append(failures, err)
			} else {
				served[serial]++
			}
			mu.Unlock()
		}
	})
	seen := func(serial string) bool {
		mu.Lock()
		defer mu.Unlock()
		return served[serial] > 0
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond) // polls the client goroutine
		}
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"the issued certificate is served", func(t *testing.T) {
			waitFor("a call", func() bool { return seen(oldSerial) })
		}},
		{"with two thirds of its life left no CSR is sent", func(t *testing.T) {
			e.clock.Advance(20 * 24 * time.Hour)
			beat(t, c, nil)
			var hb hostapi.Heartbeat
			e.cp.get(func(f *fakeCP) { hb = f.beats[len(f.beats)-1] })
			if hb.CSR != "" {
				t.Fatal("a CSR with 70 days left of 90")
			}
		}},
		{"a heartbeat without the certificate keeps the old one", func(t *testing.T) {
			e.clock.Advance(41 * 24 * time.Hour) // 29 days of 90 left
			e.cp.set(func(f *fakeCP) { f.answerCert = false })
			beat(t, c, nil)
			var hb hostapi.Heartbeat
			e.cp.get(func(f *fakeCP) { hb = f.beats[len(f.beats)-1] })
			if hb.CSR == "" {
				t.Fatal("no CSR with less than a third of the lifetime left")
			}
			if c.ServerCertificate().SerialNumber.String() != oldSerial {
				t.Fatal("the certificate changed without an answer")
			}
		}},
		{"the renewed certificate is served without a restart", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.answerCert = true })
			beat(t, c, nil)
			newSerial := c.ServerCertificate().SerialNumber.String()
			if newSerial == oldSerial {
				t.Fatal("the certificate was not renewed")
			}
			waitFor("a call served with the new certificate", func() bool { return seen(newSerial) })
			stop.Store(true)
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			if len(failures) > 0 {
				t.Fatalf("%d calls failed during the rotation, first: %v", len(failures), failures[0])
			}
			// No further CSR: the new certificate is young.
			beat(t, c, nil)
			var hb hostapi.Heartbeat
			e.cp.get(func(f *fakeCP) { hb = f.beats[len(f.beats)-1] })
			if hb.CSR != "" {
				t.Fatal("still asking for a certificate after the renewal")
			}
		}},
		{"a restart serves the renewed certificate", func(t *testing.T) {
			r := e.open(t)
			if got, want := r.ServerCertificate().SerialNumber, c.ServerCertificate().SerialNumber; got.Cmp(want) != 0 {
				t.Fatalf("restart serves serial %v, want %v", got, want)
			}
			pemBytes, _ := os.ReadFile(filepath.Join(e.dir, agentreg.ServerCertFile))
			if strings.Count(string(pemBytes), "PRIVATE KEY-----") != 2 {
				t.Fatal("the stored certificate file holds no key")
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			stop.Store(true)
			wg.Wait()
			return
		}
	}
}

// TestCARotation: a CA bundle in a heartbeat answer is stored and trusted
// from the next handshake on: the control plane's certificate of the new
// CA is accepted beside the old one's; an unusable bundle changes nothing.
func TestCARotation(t *testing.T) {
	e := newEnv(t)
	c := e.registered(t)
	addr := serveMTLS(t, c)
	next := newTestCA(t, "capsule test CA 2")
	oldCP, newCP := e.ca.controlPlaneCert(t), next.controlPlaneCert(t)
	call := func(cert tls.Certificate) error {
		_, err := dialServed(t, addr, e.ca, cert, e.clock.Now)
		return err
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"before the rotation the new CA is not trusted", func(t *testing.T) {
			if err := call(oldCP); err != nil {
				t.Fatal(err)
			}
			if err := call(newCP); err == nil {
				t.Fatal("a certificate of the next CA was accepted before the rotation")
			}
		}},
		{"an unusable CA changes nothing", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.caAnswer = "not a PEM" })
			beat(t, c, nil)
			if err := call(oldCP); err != nil {
				t.Fatal(err)
			}
		}},
		{"the bundle of both is trusted without a restart", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.caAnswer = e.ca.pem + next.pem })
			beat(t, c, nil)
			for _, cert := range []tls.Certificate{oldCP, newCP} {
				if err := call(cert); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"a restart trusts the stored bundle", func(t *testing.T) {
			stored, _ := os.ReadFile(filepath.Join(e.dir, agentreg.CAFile))
			if string(stored) != e.ca.pem+next.pem {
				t.Fatal("the CA bundle was not stored")
			}
			addr2 := serveMTLS(t, e.open(t))
			if _, err := dialServed(t, addr2, e.ca, newCP, e.clock.Now); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}
