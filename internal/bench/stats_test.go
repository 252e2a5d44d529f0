package bench

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name     string
		in       []time.Duration
		p50, p99 float64
	}{
		{"empty", nil, 0, 0},
		{"one", []time.Duration{3 * time.Millisecond}, 3, 3},
		{"unsorted", []time.Duration{5 * time.Millisecond, 1500 * time.Microsecond, 4 * time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}, 3, 5},
		{"hundred", hundred(), 50, 99},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Summarize(tc.in)
			if got.P50 != tc.p50 || got.P99 != tc.p99 || got.N != len(tc.in) {
				t.Fatalf("got %+v, want p50 %v p99 %v n %d", got, tc.p50, tc.p99, len(tc.in))
			}
		})
	}
}

func hundred() []time.Duration {
	out := make([]time.Duration, 100)
	for i := range out {
		out[i] = time.Duration(100-i) * time.Millisecond
	}
	return out
}
