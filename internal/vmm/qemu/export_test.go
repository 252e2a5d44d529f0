package qemu

// SetStreamSnapshots makes d's snapshots use a migration stream split by
// splitStream (the fallback path) instead of device state alone.
func SetStreamSnapshots(d *Driver, on bool) { d.streamSnapshots.Store(on) }

// SetUnguarded starts d's VMMs with private RAM without the fallocate
// guard (guard.go), for the test that shows what the guard prevents.
func SetUnguarded(d *Driver, on bool) { d.unguarded = on }
