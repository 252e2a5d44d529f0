package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/stat and of utime and stime in
// /proc/<pid>/stat: 100 on every Linux architecture (sysconf(_SC_CLK_TCK);
// the kernel fixes it whatever its own HZ).
const clockTick = 10 * time.Millisecond

// BusyCPU is the CPU time all of the machine's cores have spent busy since
// boot, from the aggregate "cpu" line of /proc/stat: user, nice, system,
// irq, softirq and steal (guest time is part of user), not idle nor
// iowait. The difference of two readings is the CPU that everything on
// the machine used in between, whichever process or kernel thread did the
// work; over a wall time T it is at most T × the cores.
func BusyCPU() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseBusyCPU(f)
}

// parseBusyCPU reads the first "cpu " line of a /proc/stat file.
func parseBusyCPU(r io.Reader) (time.Duration, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "cpu ")
		if !ok {
			continue
		}
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// kernels before 2.6.11 stop after softirq.
		f := strings.Fields(rest)
		if len(f) < 7 {
			return 0, fmt.Errorf("/proc/stat: %d fields on the cpu line, want ≥ 7", len(f))
		}
		var busy uint64
		for i, v := range f {
			if i > 7 {
				break // guest, guest_nice: already in user, nice
			}
			if i == 3 || i == 4 {
				continue // idle, iowait
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
			}
			busy += n
		}
		return time.Duration(busy) * clockTick, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("/proc/stat: no cpu line")
}

// CPUFloorRatio is the least ratio of the wall time of n creates at once
// to the wall time of one (oneWall) that CPU alone allows, when each of
// the n costs cpuEach of busy CPU (all processes together) and the machine
// has cores: the n need n × cpuEach of CPU, which cores can deliver in no
// less than n × cpuEach / cores of wall time. 0 without a figure.
func CPUFloorRatio(cpuEach time.Duration, n, cores int, oneWall time.Duration) float64 {
	if oneWall <= 0 || cores <= 0 {
		return 0
	}
	return Round3(float64(cpuEach) * float64(n) / float64(cores) / float64(oneWall))
}

// MS is a duration in milliseconds, rounded for printing.
func MS(d time.Duration) float64 { return ms(d) }
