package qemu

// SetStreamSnapshots makes d's snapshots use a migration stream split by
// splitStream (the fallback path) instead of device state alone.
func SetStreamSnapshots(d *Driver, on bool) { d.streamSnapshots.Store(on) }
