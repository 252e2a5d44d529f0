package sandbox

// SetDiskHeadroom changes a manager's Config.DiskHeadroomMB (tests fill
// the disk on paper instead of for real).
func SetDiskHeadroom(m *Manager, mb int64) { m.headroomMB.Store(mb) }

// SetCrashHook sets the hook called at each crash point (tests only).
func SetCrashHook(f func(point string)) { crashHook = f }

// AbandonPrepared stops m's pool of prepared VMMs from filling and lets
// go of its VMMs without stopping them, as a killed agent would leave
// them (tests only).
func AbandonPrepared(m *Manager) {
	m.prepared.mu.Lock()
	m.prepared.closed = true
	for _, set := range m.prepared.pools {
		m.prepared.release(set) // their watchers return; nothing is discarded
	}
	m.prepared.pools = map[preparedKey]*preparedSet{}
	m.prepared.mu.Unlock()
	m.prepared.cancel()
	m.prepared.wg.Wait()
}

// MaxYoungDeaths is maxYoungDeaths.
const MaxYoungDeaths = maxYoungDeaths

// PreparedPIDs returns the VMM pids of m's prepared VMMs that are ready
// for a create (tests only).
func PreparedPIDs(m *Manager) []int {
	m.prepared.mu.Lock()
	defer m.prepared.mu.Unlock()
	var out []int
	for _, set := range m.prepared.pools {
		for _, pv := range set.ready {
			out = append(out, pv.p.PID())
		}
	}
	return out
}
