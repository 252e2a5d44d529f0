package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/capsulehq/capsule/internal/servetls"
)

// tlsOptions are serve's HTTPS flags: a certificate and key for
// *.DOMAIN and the API's host, or the development CA.
type tlsOptions struct {
	certFile, keyFile string
	devCA             bool
}

func (t *tlsOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&t.certFile, "tls-cert", "", "PEM certificate (chain) for *.DOMAIN, DOMAIN and the API's host: both listeners serve HTTPS with it and -tls-key (empty: plain HTTP, e.g. behind a reverse proxy) [CAPSULE_TLS_CERT]")
	fs.StringVar(&t.keyFile, "tls-key", "", "PEM private key of -tls-cert [CAPSULE_TLS_KEY]")
	fs.BoolVar(&t.devCA, "tls-dev-ca", false, "development HTTPS: a local CA kept in DATA-DIR/tls (key 0600) issues the listeners' certificate for *.DOMAIN, DOMAIN, the -public-url host and localhost; its root is printed and written to DATA-DIR/tls/dev-ca.crt (NODE_EXTRA_CA_CERTS) [CAPSULE_TLS_DEV_CA]")
}

// check validates the combination.
func (t *tlsOptions) check() error {
	if (t.certFile == "") != (t.keyFile == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if t.devCA && t.certFile != "" {
		return errors.New("-tls-dev-ca and -tls-cert exclude each other")
	}
	return nil
}

// serverTLS is the listeners' TLS configuration (nil: plain HTTP).
func (o *serveOptions) serverTLS(log *slog.Logger) (*tls.Config, error) {
	switch {
	case o.tls.certFile != "":
		cert, err := servetls.FromFiles(o.tls.certFile, o.tls.keyFile, o.domain)
		if err != nil {
			return nil, err
		}
		log.Info("HTTPS with the configured certificate", "cert", o.tls.certFile, "subject", cert.Leaf.Subject.String())
		return servetls.ServerConfig(cert), nil
	case o.tls.devCA:
		ca, err := servetls.LoadOrCreateDevCA(filepath.Join(o.dataDir, "tls"), nil)
		if err != nil {
			return nil, err
		}
		names := servetls.Names(o.domain, o.publicURL)
		cert, err := ca.Issue(names, time.Now())
		if err != nil {
			return nil, err
		}
		log.Warn("HTTPS with the development CA: for development only", "root", ca.CertPath, "names", names)
		fmt.Printf("capsule serve: HTTPS with the development CA; clients trust its root, written to %s\n"+
			"  (Node, the E2B SDK: export NODE_EXTRA_CA_CERTS=%s)\n%s", ca.CertPath, ca.CertPath, ca.RootPEM())
		_ = os.Stdout.Sync()
		return servetls.ServerConfig(cert), nil
	}
	return nil, nil
}
