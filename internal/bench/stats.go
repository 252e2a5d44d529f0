// Package bench holds the benchmarks behind `capsule bench …`. Each prints
// one JSON object: timings as {"p50_ms","p99_ms","n"} under snake_case keys
// named after the figure, ratios and sizes as plain numbers.
package bench

import (
	"math"
	"slices"
	"time"
)

// Timing is the JSON form of a latency distribution.
type Timing struct {
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	N   int     `json:"n"`
}

// Summarize computes the p50 and p99 of samples (nearest-rank).
func Summarize(samples []time.Duration) Timing {
	if len(samples) == 0 {
		return Timing{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Timing{P50: ms(percentile(s, 50)), P99: ms(percentile(s, 99)), N: len(s)}
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Millisecond)*1000) / 1000
}

// Round3 rounds a ratio or rate for printing.
func Round3(x float64) float64 { return math.Round(x*1000) / 1000 }
