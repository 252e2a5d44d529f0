package sandbox

// SetDiskHeadroom changes a manager's Config.DiskHeadroomMB (tests fill
// the disk on paper instead of for real).
func SetDiskHeadroom(m *Manager, mb int64) { m.headroomMB.Store(mb) }
