package metrics

import (
	"sync"
	"time"
)

// Tier names a resolution of a sandbox's history.
type Tier int

const (
	// Tier10m: the raw samples, 10 minutes at 0.5 s.
	Tier10m Tier = iota
	// Tier2h: 2 hours of 30 s averages.
	Tier2h
	// Tier24h: 24 hours of 5 min averages.
	Tier24h
	// NumTiers counts the tiers.
	NumTiers
)

// TierSpec is the resolution and the length of a tier.
type TierSpec struct {
	Step time.Duration
	Len  int
}

// Tiers are the tiers' specs, indexed by Tier.
var Tiers = [NumTiers]TierSpec{
	Tier10m: {Step: 500 * time.Millisecond, Len: 1200},
	Tier2h:  {Step: 30 * time.Second, Len: 240},
	Tier24h: {Step: 5 * time.Minute, Len: 288},
}

// Span is how far back a tier reaches.
func (t Tier) Span() time.Duration { return Tiers[t].Step * time.Duration(Tiers[t].Len) }

// Valid reports whether t names a tier.
func (t Tier) Valid() bool { return t >= 0 && t < NumTiers }

// Guest is what the guest's envd reports (bytes, percent of its vCPUs).
type Guest struct {
	CPUCount  int32
	CPUPct    float64
	MemUsed   int64
	MemTotal  int64
	MemCache  int64
	DiskUsed  int64
	DiskTotal int64
}

// Point is one sample (tier 0) or the mean of the samples of a bucket
// (tiers 1 and 2; TS is the bucket's start).
type Point struct {
	TS time.Time
	// CPUPct is the VMM process' CPU use in percent of one core.
	CPUPct float64
	// Bytes: the VMM's resident and proportional set sizes, the blocks
	// its overlay files take.
	MemRSS, MemPSS, DiskUsed int64
	// HasGuest: Guest holds envd's figures (false when none of the
	// bucket's samples had them).
	HasGuest bool
	Guest    Guest
}

// ring is a fixed-size circular buffer of points, oldest first.
type ring struct {
	buf   []Point
	start int // index of the oldest point
	n     int
}

func newRing(size int) ring { return ring{buf: make([]Point, size)} }

func (r *ring) push(p Point) {
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = p
		r.n++
		return
	}
	r.buf[r.start] = p
	r.start = (r.start + 1) % len(r.buf)
}

func (r *ring) at(i int) *Point { return &r.buf[(r.start+i)%len(r.buf)] }

// acc sums the samples of one bucket.
type acc struct {
	bucket                                time.Time
	n, gn                                 int64
	cpu, rss, pss, disk                   float64
	gcpu, gused, gtotal, gcache, gdu, gdt float64
	gcount                                int32
}

func (a *acc) add(p *Point) {
	a.n++
	a.cpu += p.CPUPct
	a.rss += float64(p.MemRSS)
	a.pss += float64(p.MemPSS)
	a.disk += float64(p.DiskUsed)
	if p.HasGuest {
		g := &p.Guest
		a.gn++
		a.gcpu += g.CPUPct
		a.gused += float64(g.MemUsed)
		a.gtotal += float64(g.MemTotal)
		a.gcache += float64(g.MemCache)
		a.gdu += float64(g.DiskUsed)
		a.gdt += float64(g.DiskTotal)
		a.gcount = max(a.gcount, g.CPUCount)
	}
}

func (a *acc) merge(b *acc) {
	a.n += b.n
	a.gn += b.gn
	a.cpu += b.cpu
	a.rss += b.rss
	a.pss += b.pss
	a.disk += b.disk
	a.gcpu += b.gcpu
	a.gused += b.gused
	a.gtotal += b.gtotal
	a.gcache += b.gcache
	a.gdu += b.gdu
	a.gdt += b.gdt
	a.gcount = max(a.gcount, b.gcount)
}

func (a *acc) mean() Point {
	n := float64(a.n)
	p := Point{TS: a.bucket, CPUPct: a.cpu / n, MemRSS: round(a.rss / n), MemPSS: round(a.pss / n), DiskUsed: round(a.disk / n)}
	if a.gn > 0 {
		g := float64(a.gn)
		p.HasGuest = true
		p.Guest = Guest{CPUCount: a.gcount, CPUPct: a.gcpu / g, MemUsed: round(a.gused / g), MemTotal: round(a.gtotal / g),
			MemCache: round(a.gcache / g), DiskUsed: round(a.gdu / g), DiskTotal: round(a.gdt / g)}
	}
	return p
}

func round(f float64) int64 { return int64(f + 0.5) }

// Series is the history of one sandbox: the three tiers and the buckets
// being filled. Its memory is fixed. It is safe for concurrent use.
type Series struct {
	mu    sync.Mutex
	rings [NumTiers]ring
	// open[0] fills the current tier-1 bucket from samples, open[1] the
	// current tier-2 bucket from closed tier-1 buckets.
	open [NumTiers - 1]acc
	last time.Time
}

// NewSeries returns an empty history.
func NewSeries() *Series {
	s := &Series{}
	for t := range NumTiers {
		s.rings[t] = newRing(Tiers[t].Len)
	}
	return s
}

// Add appends a sample (tier 0) and folds it into the averages. Samples
// must come in time order: one not after the last is dropped.
func (s *Series) Add(p Point) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.IsZero() && !p.TS.After(s.last) {
		return
	}
	s.last = p.TS
	s.rings[Tier10m].push(p)
	b1 := p.TS.Truncate(Tiers[Tier2h].Step)
	o1 := &s.open[0]
	if o1.n > 0 && !o1.bucket.Equal(b1) {
		s.rings[Tier2h].push(o1.mean())
		b2 := o1.bucket.Truncate(Tiers[Tier24h].Step)
		o2 := &s.open[1]
		if o2.n > 0 && !o2.bucket.Equal(b2) {
			s.rings[Tier24h].push(o2.mean())
			*o2 = acc{}
		}
		if o2.n == 0 {
			o2.bucket = b2
		}
		o2.merge(o1)
		*o1 = acc{}
	}
	if o1.n == 0 {
		o1.bucket = b1
	}
	o1.add(&p)
}

// Points returns the points of tier t whose time is in [from, to] (zero
// times: unbounded), oldest first, appended to dst. For tiers 1 and 2 the
// bucket being filled comes last, as the mean of what it has so far.
func (s *Series) Points(dst []Point, t Tier, from, to time.Time) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := func(ts time.Time) bool {
		return (from.IsZero() || !ts.Before(from)) && (to.IsZero() || !ts.After(to))
	}
	r := &s.rings[t]
	for i := 0; i < r.n; i++ {
		if p := r.at(i); in(p.TS) {
			dst = append(dst, *p)
		}
	}
	switch t {
	case Tier2h:
		if o := &s.open[0]; o.n > 0 && in(o.bucket) {
			dst = append(dst, o.mean())
		}
	case Tier24h:
		// The open tier-2 bucket plus the open tier-1 bucket when it
		// belongs to it.
		o := s.open[1]
		o1 := &s.open[0]
		if o1.n > 0 {
			b2 := o1.bucket.Truncate(Tiers[Tier24h].Step)
			switch {
			case o.n == 0:
				o = *o1
				o.bucket = b2
			case o.bucket.Equal(b2):
				o.merge(o1)
			default:
				if in(o.bucket) {
					dst = append(dst, o.mean())
				}
				o = *o1
				o.bucket = b2
			}
		}
		if o.n > 0 && in(o.bucket) {
			dst = append(dst, o.mean())
		}
	}
	return dst
}

// Last is the newest sample (ok false when there is none).
func (s *Series) Last() (Point, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &s.rings[Tier10m]
	if r.n == 0 {
		return Point{}, false
	}
	return *r.at(r.n - 1), true
}
