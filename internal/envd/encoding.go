package envd

import (
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// responseEncoding chooses the download's content coding from
// Accept-Encoding (spec §7.2): "gzip", "identity", or "" when neither is
// acceptable. The highest q among gzip, identity and * wins (ties keep
// header order; * means identity); Range and conditional requests are
// always served as identity.
func responseEncoding(h http.Header) string {
	for _, k := range []string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"} {
		if h.Get(k) != "" {
			return "identity"
		}
	}
	values := h.Values("Accept-Encoding")
	if len(values) == 0 {
		return "identity"
	}
	best, bestQ := "", 0.0
	identityQ, starQ := -1.0, -1.0
	for _, c := range parseAcceptEncoding(strings.Join(values, ",")) {
		switch c.name {
		case "identity":
			identityQ = c.q
		case "*":
			starQ = c.q
		case "gzip":
		default:
			continue
		}
		if c.q > bestQ {
			best, bestQ = c.name, c.q
		}
	}
	switch {
	case best == "gzip":
		return "gzip"
	case best != "":
		return "identity"
	case identityQ == 0, identityQ < 0 && starQ == 0:
		return "" // identity explicitly refused
	default:
		return "identity"
	}
}

type acceptedCoding struct {
	name string
	q    float64
}

// parseAcceptEncoding splits an Accept-Encoding value into codings with
// their q-values (1 when absent; malformed q-values count as 0).
func parseAcceptEncoding(v string) []acceptedCoding {
	var out []acceptedCoding
	for item := range strings.SplitSeq(v, ",") {
		name, params, _ := strings.Cut(item, ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		c := acceptedCoding{name: name, q: 1}
		for param := range strings.SplitSeq(params, ";") {
			k, val, _ := strings.Cut(param, "=")
			if strings.EqualFold(strings.TrimSpace(k), "q") {
				q, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
				if err != nil || !(q >= 0 && q <= 1) { // NaN too
					q = 0
				}
				c.q = q
			}
		}
		out = append(out, c)
	}
	return out
}

// decodedBody undoes the request's Content-Encoding (gzip or none).
func decodedBody(r *http.Request) (io.Reader, error) {
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
		return r.Body, nil
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, &httpError{status: http.StatusBadRequest, msg: "invalid gzip body", cause: err}
		}
		return zr, nil
	default:
		return nil, badRequest("unsupported content encoding '%s'", enc)
	}
}
