package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Forks. Fork makes running copies of a running sandbox: the source's
// guest is stopped for as long as its memory takes to save (the hold,
// Machine.Snapshot with keepRunning: its RAM is copied into memory while
// the guest is stopped and written out after it runs again; its disk
// overlay is reflinked or copied) into a hidden snapshot template
// ("fork-<random>", which no user can name), and every fork is created
// from that template as any snapshot template's sandbox is: its memory
// maps the template's memory file lazily and copy-on-write (the forks
// share its page cache), its disk is a qcow2 overlay on the template's
// copy of the source's disk (so it chains onto what the source's disk
// chains onto), it gets its own network slot, and /init gives it its own
// access token, environment (E2B_SANDBOX_ID), hostname and fresh entropy
// (a reseed of the guest kernel's RNG).
//
// The template's index is deleted as soon as the forks are made: its name
// is gone, and its directory (memory file and disk copy) stays for as
// long as a fork's disk backs onto it (the template chain rule, see the
// package doc), that is until the last fork is destroyed; then it is
// collected. A fork that failed leaves nothing (Create's rollback), and a
// fork template that a crash left indexed is deleted when the manager
// starts again (New).

// forkPrefix starts the names of fork templates.
const forkPrefix = "fork-"

func isFork(name string) bool { return strings.HasPrefix(name, forkPrefix) }

// MaxForks bounds the forks of one Fork call.
const MaxForks = 32

// ForkResult is what Fork made: one entry per requested fork, in order.
type ForkResult struct {
	// Sandboxes[i] is fork i, or nil when it failed with Errs[i].
	Sandboxes []*Info
	Errs      []error
	// Hold is how long the source's guest was stopped.
	Hold time.Duration
}

// Fork makes len(forks) copies of running sandbox sourceID (see above).
// forks are the new sandboxes' options: their IDs, tokens, environments,
// metadata and timeouts; their template, shape and disk are the source's
// (Template, VCPUs, MemoryMB and DiskMB are ignored), and so are their
// egress rules unless Network is set. An error is returned when nothing
// could be forked (the source is not running, the options are invalid,
// the snapshot failed); otherwise each fork's outcome is in the result.
func (m *Manager) Fork(ctx context.Context, sourceID string, forks []CreateOptions) (*ForkResult, error) {
	if len(forks) < 1 || len(forks) > MaxForks {
		return nil, fmt.Errorf("%w: 1 to %d forks", ErrInvalid, MaxForks)
	}
	seen := map[string]bool{}
	for _, o := range forks {
		if !idRe.MatchString(o.ID) || strings.HasPrefix(o.ID, warmSandboxPrefix) {
			return nil, fmt.Errorf("%w: fork ID %q must match [a-z0-9]{1,63} and not start with %q", ErrInvalid, o.ID, warmSandboxPrefix)
		}
		if seen[o.ID] || o.ID == sourceID {
			return nil, fmt.Errorf("%w: fork ID %q is given twice", ErrInvalid, o.ID)
		}
		seen[o.ID] = true
		if err := checkRules(o.Network); err != nil {
			return nil, err
		}
	}
	src, err := m.get(sourceID)
	if err != nil {
		return nil, err
	}
	srcRec := src.snapshotRecord()
	var suffix [12]byte
	_, _ = rand.Read(suffix[:])
	name := forkPrefix + hex.EncodeToString(suffix[:])
	tpl, err := m.makeTemplate(ctx, sourceID, name, KindSnapshot, useFork)
	if err != nil {
		return nil, err
	}
	// The name goes at once; the files stay while a fork's disk chains
	// onto them.
	defer func() {
		if err := m.DeleteTemplate(name); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.ErrorContext(ctx, "delete a fork template", "template", name, "err", err)
		}
	}()
	res := &ForkResult{Sandboxes: make([]*Info, len(forks)), Errs: make([]error, len(forks)), Hold: tpl.hold}
	var wg sync.WaitGroup
	for i, o := range forks {
		o.from, o.Template = tpl, srcRec.Template
		o.VCPUs, o.MemoryMB, o.DiskMB = tpl.VCPUs, tpl.MemoryMB, srcRec.DiskMB
		if o.Network == nil {
			o.Network = cloneRules(srcRec.Network)
			o.Egress = srcRec.Egress
		}
		if o.DefaultUser == "" {
			o.DefaultUser = srcRec.DefaultUser
		}
		if o.DefaultWorkdir == "" {
			o.DefaultWorkdir = srcRec.DefaultWorkdir
		}
		if o.Hostname == "" {
			o.Hostname = o.ID
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res.Sandboxes[i], res.Errs[i] = m.Create(ctx, o)
		}()
	}
	wg.Wait()
	made := 0
	for _, in := range res.Sandboxes {
		if in != nil {
			made++
		}
	}
	m.log.InfoContext(ctx, "sandbox forked", "sandbox", sourceID, "forks", made, "failed", len(forks)-made,
		"hold", tpl.hold.Round(time.Millisecond))
	return res, nil
}

// dropForkTemplates deletes the fork templates a manager that died in
// the middle of a Fork left indexed (their forks, if any, keep the files).
func (m *Manager) dropForkTemplates() {
	ts, err := m.allTemplates()
	if err != nil {
		m.log.Warn("list templates", "err", err)
		return
	}
	for _, t := range ts {
		if isFork(t.Name) {
			if err := m.DeleteTemplate(t.Name); err != nil {
				m.log.Warn("delete a leftover fork template", "template", t.Name, "err", err)
			}
		}
	}
}
