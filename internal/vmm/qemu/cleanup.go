package qemu

import "context"

// Cleanup implements vmm.Driver: it kills the VMM of dir left by an
// earlier agent (see the package function Cleanup).
func (d *Driver) Cleanup(ctx context.Context, dir string) error { return Cleanup(ctx, dir) }
