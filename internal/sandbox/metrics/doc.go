// Package metrics is the host side of sandbox metrics: one sampler for all
// the running sandboxes of a host, and each sandbox's history in three
// fixed-size ring buffers.
//
// Every Interval (500 ms) the sampler reads, for each running sandbox, the
// CPU time of its VMM process (/proc/<pid>/stat: utime+stime, the delta
// over the wall-clock delta, in percent of one core, so a machine with two
// busy vCPUs shows about 200), its memory (RSS from /proc/<pid>/statm every
// sample; PSS from /proc/<pid>/smaps_rollup every 30 s, carried between —
// smaps_rollup walks the VMM's page tables, about 2 ms for 256 MiB
// resident, which at every sample of 20 sandboxes measured 0.19 of a
// core), the disk its copy-on-write layer really takes (the allocated
// blocks of its overlay files, st_blocks × 512, not their apparent size)
// and the guest's own figures from envd's /metrics (guest CPU, memory and
// disk used). The /proc files and the overlays are opened once when a
// sandbox is added and read with one pread (or fstat) each per sample
// into buffers that are reused: a sample of one sandbox is three or four
// system calls and no allocation. A VMM whose process is gone reads ESRCH
// on its open files, never another process that took its PID.
//
// The guest's figures come over HTTP and must never hold the sampler up:
// each tick starts at most one request per sandbox (with a timeout of two
// intervals) in a goroutine of its own, and the next sample takes its
// answer if it arrived and is fresh; a failed or slow read leaves the
// guest fields of the sample empty (Point.HasGuest false). No guest read
// is made before a target's GuestAfter: package sandbox starts them 2 s
// after a sandbox starts, since under TCG every request costs a guest
// that was just restored the translation of the code it runs.
//
// Tiers (Series): tier 0 keeps 10 minutes at 0.5 s (1200 points), tier 1
// 2 hours of 30 s averages (240), tier 2 24 hours of 5 min averages (288).
// Averages are computed from the finer tier as it fills: the samples of a
// 30 s bucket (aligned to the wall clock) are summed and become one tier-1
// point when the first sample of the next bucket arrives; the sums of the
// tier-1 buckets that fall in one 5 min bucket become one tier-2 point the
// same way, weighted by their sample counts, so a tier-2
// point is the exact mean of its samples. The bucket being filled is
// reported as the last point of its tier (Points), so a reader never waits
// 5 minutes for a first point; its value moves until the bucket closes.
// Memory is fixed per sandbox (about 170 KB); nothing grows with time.
//
// The sampler is one goroutine for all sandboxes, driven by a ticker; its
// clock is injected (Config.Now) and SampleAll can be called with any time,
// which is how the tests drive it. Cost reports the CPU time the sampling
// itself took (the goroutine is locked to its OS thread and reads
// RUSAGE_THREAD around each round).
package metrics
