package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/capsulehq/capsule/internal/sandbox"
)

// collector is the agent's Prometheus collector: the host's capacity and
// what sandboxes use of it, sandboxes by state, and the metrics sampler's
// cost, all read at scrape time.
type collector struct {
	a                                    *Agent
	capacity, used, sandboxes            *prometheus.Desc
	samplerRounds, samplerCPU, samplerSB *prometheus.Desc
}

// Collector returns the agent's Prometheus collector (register it on the
// registry its /metrics serves; package telemetry serves it).
func (a *Agent) Collector() prometheus.Collector {
	return &collector{a: a,
		capacity:      prometheus.NewDesc("capsule_host_capacity", "What sandboxes may use on this host (0: unlimited), by resource (vcpus, memory_mb, disk_mb).", []string{"resource"}, nil),
		used:          prometheus.NewDesc("capsule_host_used", "What sandboxes use on this host: vCPUs and memory of machines that run or are on their way, disk of every sandbox.", []string{"resource"}, nil),
		sandboxes:     prometheus.NewDesc("capsule_host_sandboxes", "Sandboxes on this host by state.", []string{"state"}, nil),
		samplerRounds: prometheus.NewDesc("capsule_metrics_sampler_rounds_total", "Rounds of the per-sandbox metrics sampler (one every 0.5 s).", nil, nil),
		samplerCPU:    prometheus.NewDesc("capsule_metrics_sampler_cpu_seconds_total", "CPU time the metrics sampler's rounds took (its goroutine's thread).", nil, nil),
		samplerSB:     prometheus.NewDesc("capsule_metrics_sampler_sandboxes", "Sandboxes the metrics sampler samples now.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.capacity, c.used, c.sandboxes, c.samplerRounds, c.samplerCPU, c.samplerSB} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	capa := c.a.cfg.Capacity
	var vcpus, memMB, diskMB float64
	states := map[sandbox.State]int{}
	for _, in := range c.a.mgr.List() {
		states[in.State]++
		diskMB += float64(in.DiskMB)
		if in.State == sandbox.StatePaused || in.State == sandbox.StateStopped || in.State == sandbox.StateError {
			continue
		}
		vcpus += float64(in.VCPUs)
		memMB += float64(in.MemoryMB)
	}
	for _, r := range []struct {
		name      string
		cap, used float64
	}{{"vcpus", float64(capa.VCPUs), vcpus}, {"memory_mb", float64(capa.MemoryMB), memMB}, {"disk_mb", float64(capa.DiskMB), diskMB}} {
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, r.cap, r.name)
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, r.used, r.name)
	}
	for st := range states {
		ch <- prometheus.MustNewConstMetric(c.sandboxes, prometheus.GaugeValue, float64(states[st]), string(st))
	}
	for _, st := range []sandbox.State{sandbox.StateRunning, sandbox.StatePaused} {
		if _, ok := states[st]; !ok {
			ch <- prometheus.MustNewConstMetric(c.sandboxes, prometheus.GaugeValue, 0, string(st))
		}
	}
	sp := c.a.mgr.Sampler()
	rounds, cpu := sp.Cost()
	ch <- prometheus.MustNewConstMetric(c.samplerRounds, prometheus.CounterValue, float64(rounds))
	ch <- prometheus.MustNewConstMetric(c.samplerCPU, prometheus.CounterValue, cpu.Seconds())
	ch <- prometheus.MustNewConstMetric(c.samplerSB, prometheus.GaugeValue, float64(sp.Len()))
}
