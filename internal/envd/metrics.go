package envd

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// cpuSampler turns the cumulative counters of /proc/stat into a usage
// percentage between two consecutive calls.
type cpuSampler struct {
	mu          sync.Mutex
	total, idle uint64
}

func (c *cpuSampler) usedPct() (float64, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, fmt.Errorf("empty /proc/stat")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat line %q", sc.Text())
	}
	var total, idle uint64
	for i, v := range fields[1:] {
		n := parseUint(v)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	dt, di := total-c.total, idle-c.idle
	c.total, c.idle = total, idle
	if dt == 0 {
		return 0, nil
	}
	pct := 100 * float64(dt-di) / float64(dt)
	return math.Round(pct*100) / 100, nil
}

func readMeminfo() (map[string]uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		m[k] = parseUint(v) * 1024
	}
	return m, sc.Err()
}

func (s *Server) collectMetrics() (*Metrics, error) {
	pct, err := s.cpu.usedPct()
	if err != nil {
		return nil, err
	}
	mem, err := readMeminfo()
	if err != nil {
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return nil, err
	}
	total := mem["MemTotal"]
	cache := mem["Cached"] + mem["Buffers"]
	used := total - mem["MemAvailable"]
	bs := uint64(st.Bsize)
	return &Metrics{
		Timestamp:  s.now().Unix(),
		CPUCount:   runtime.NumCPU(),
		CPUUsedPct: pct,
		MemTotal:   total,
		MemUsed:    used,
		MemCache:   cache,
		MemTotalMi: total >> 20,
		MemUsedMi:  used >> 20,
		DiskUsed:   (st.Blocks - st.Bfree) * bs,
		DiskTotal:  st.Blocks * bs,
	}, nil
}
