package e2bapi

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/api"
	"github.com/capsulehq/capsule/internal/service"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// clientStatus is the status a client is answered for err.
func clientStatus(err error) int {
	status, _ := api.Problem(quiet, httptest.NewRequest(http.MethodPost, "/", nil), err)
	return status
}

// FuzzCreateBody: a create body (POST /sandboxes) either becomes a request
// for a named template with a positive timeout, or is refused with a 4xx.
func FuzzCreateBody(f *testing.F) {
	for _, s := range []string{
		`{"templateID":"base","timeout":60,"metadata":{"k":"v"},"envVars":{"A":"b"}}`,
		`{"templateID":"base:default","autoPause":true,"autoPauseMemory":false}`,
		`{"templateID":"base:v2"}`,
		`{"templateID":"x","network":{"denyOut":["0.0.0.0/0"]},"allow_internet_access":true}`,
		`{"templateID":"x","network":{"denyOut":["0.0.0.0/0"],"allowPublicTraffic":false}}`,
		`{"templateID":"x","network":{"allowOut":["1.1.1.1"]}}`,
		`{"templateID":"x","mcp":{"a":1},"volumeMounts":[]}`,
		`{"templateID":"x","autoResume":{"enabled":true},"autoPause":true,"autoPauseMemory":false}`,
		`{"templateID":"x","timeout":-1}`,
		`{"templateID":"x","timeout":99999999999}`,
		`{"templateID":7}`,
		`{"templateID":""}`,
		`[]`, `null`, ``, `{`, "{\"templateID\":\"\xff\"}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest(http.MethodPost, "/sandboxes", strings.NewReader(body))
		var req newSandboxJSON
		_, err := decode(httptest.NewRecorder(), r, &req)
		if err == nil {
			c, cerr := createRequest(req, defaultTimeoutV2)
			if cerr == nil {
				if c.Template == "" || strings.Contains(c.Template, ":") || c.TimeoutSec <= 0 || c.AutoPause == nil {
					t.Fatalf("body %q became %+v", body, c)
				}
				return
			}
			err = cerr
		}
		if s := clientStatus(err); s < 400 || s > 499 {
			t.Fatalf("body %q: answered %d (%v)", body, s, err)
		}
	})
}

// FuzzListQuery: the list filters of GET /v2/sandboxes (state, metadata,
// order, unsupported options) are either understood or refused with a
// 4xx; the states asked of the store are only the ones E2B's two names
// stand for, and every metadata key is non-empty.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{
		"state=running,paused&metadata=" + url.QueryEscape("user=alice&env=prod") + "&limit=10&nextToken=abc",
		"state=running&state=%20paused%20", "state=stopped", "state=", "state=,",
		"metadata=a%3Db", "metadata=a%253Db", "metadata=%3Db", "metadata=a%3Db%3Dc", "metadata=%25zz", "metadata=&metadata=k%3D",
		"order=asc", "order=desc", "template=x", "startedAfter=2024", "%zz=1&state=running", "",
	} {
		f.Add(s)
	}
	known := slices.Concat(e2bStates["running"], e2bStates["paused"])
	f.Fuzz(func(t *testing.T, raw string) {
		q, _ := url.ParseQuery(raw) // what r.URL.Query() hands the handler
		check := func(what string, err error) {
			if err != nil {
				if s := clientStatus(err); s < 400 || s > 499 {
					t.Fatalf("%s of %q: answered %d (%v)", what, raw, s, err)
				}
			}
		}
		states, err := stateFilter(q)
		check("state", err)
		if err == nil {
			if len(states) == 0 {
				t.Fatalf("state of %q: no states (the listing would show everything or nothing)", raw)
			}
			for _, s := range states {
				if !slices.Contains(known, s) {
					t.Fatalf("state of %q: asked for %q", raw, s)
				}
			}
		}
		md, err := metadataFilter(q)
		check("metadata", err)
		for k := range md {
			if k == "" {
				t.Fatalf("metadata of %q: an empty key", raw)
			}
		}
		check("options", listOptions(q, &service.ListFilter{}))
	})
}

// FuzzSandboxIDPath: the {id} of a sandbox route names a sandbox (its
// wire ID before any "-clientID") or is a 404, never anything else.
func FuzzSandboxIDPath(f *testing.F) {
	for _, s := range []string{
		"0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef-client", "0123456789ABCDEF0123456789abcdef",
		"-0123456789abcdef0123456789abcdef", "x", "", "../../etc",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest(http.MethodGet, "/sandboxes/x", nil)
		r.SetPathValue("id", raw)
		id, err := sandboxID(r)
		if err != nil {
			if s := clientStatus(err); s != http.StatusNotFound {
				t.Fatalf("id %q: answered %d (%v)", raw, s, err)
			}
			return
		}
		if before, _, _ := strings.Cut(raw, "-"); id.String() != before {
			t.Fatalf("id %q named sandbox %s", raw, id.String())
		}
	})
}
