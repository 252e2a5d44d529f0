package cli

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress draws a one-line indicator on stderr while something takes
// time; it draws nothing when stderr is not a terminal.
type progress struct {
	w     io.Writer
	label string
	total int64 // bytes expected (0: unknown or not a transfer)

	mu    sync.Mutex
	done  int64
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
}

// startProgress starts an indicator for label (total bytes, or 0) when
// enabled; the returned value is safe to use when it is not.
func startProgress(w io.Writer, enabled bool, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, start: time.Now()}
	if !enabled {
		return p
	}
	p.stop = make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		frames := `|/-\`
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				fmt.Fprint(p.w, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(p.w, "\r\033[K%c %s", frames[i%len(frames)], p.line())
			}
		}
	}()
	return p
}

func (p *progress) line() string {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	el := time.Since(p.start)
	switch {
	case p.total > 0:
		return fmt.Sprintf("%s %s / %s (%d%%) %s/s", p.label, size(done), size(p.total), done*100/p.total, size(rate(done, el)))
	case done > 0:
		return fmt.Sprintf("%s %s %s/s", p.label, size(done), size(rate(done, el)))
	}
	return fmt.Sprintf("%s %.1fs", p.label, el.Seconds())
}

func rate(n int64, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(float64(n) / d.Seconds())
}

// add counts n more bytes.
func (p *progress) add(n int) {
	p.mu.Lock()
	p.done += int64(n)
	p.mu.Unlock()
}

// end erases the indicator.
func (p *progress) end() {
	if p.stop != nil {
		close(p.stop)
		p.wg.Wait()
		p.stop = nil
	}
}

// reader counts what passes through r.
func (p *progress) reader(r io.Reader) io.Reader { return &countingReader{r: r, p: p} }

type countingReader struct {
	r io.Reader
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.add(n)
	return n, err
}

// size formats a byte count.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
