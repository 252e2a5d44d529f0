package recipe

import (
	"fmt"
	"strings"
)

// Format writes r as recipe text that parses back to the same recipe
// (the line numbers aside): one instruction per line, START and
// HEALTHCHECK last. Values of ENV, COPY and WORKDIR are quoted.
func Format(r *Recipe) string {
	var b strings.Builder
	fmt.Fprintf(&b, "FROM %s\n", r.From)
	for _, s := range r.Steps {
		switch s.Kind {
		case Run:
			if s.Timeout != DefaultRunTimeout {
				fmt.Fprintf(&b, "RUN --timeout=%s %s\n", s.Timeout, s.Cmd)
			} else {
				fmt.Fprintf(&b, "RUN %s\n", s.Cmd)
			}
		case Env:
			b.WriteString("ENV")
			for _, v := range s.Vars {
				fmt.Fprintf(&b, " %s=%s", v.Key, Quote(v.Value))
			}
			b.WriteByte('\n')
		case Workdir:
			fmt.Fprintf(&b, "WORKDIR %s\n", Quote(s.Path))
		case User:
			fmt.Fprintf(&b, "USER %s\n", s.Name)
		case Copy:
			b.WriteString("COPY")
			if s.Chown != "" {
				fmt.Fprintf(&b, " --chown=%s", s.Chown)
			}
			if s.Chmod != "" {
				fmt.Fprintf(&b, " --chmod=%s", s.Chmod)
			}
			fmt.Fprintf(&b, " %s %s\n", Quote(s.Src), Quote(s.Path))
		}
	}
	if r.StartLine != 0 {
		fmt.Fprintf(&b, "START %s\n", r.Start)
	}
	if c := r.Healthcheck; c != nil {
		fmt.Fprintf(&b, "HEALTHCHECK --interval=%s --timeout=%s --start-period=%s --retries=%d %s\n",
			c.Interval, c.Timeout, c.StartPeriod, c.Retries, c.Cmd)
	}
	return b.String()
}

// Quote quotes s as one word of ENV, COPY or WORKDIR.
func Quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}
