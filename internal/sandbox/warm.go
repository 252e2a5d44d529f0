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

// Warm snapshots (Config.WarmImages): creating a sandbox from an image
// template cold-boots it (seconds; most of it under TCG), while restoring
// a snapshot template takes a fraction of a second. So the first create
// of an image template with a machine shape (vCPUs, memory) boots cold and,
// in the background, the manager boots one more sandbox of that shape,
// saves it as a hidden snapshot template, and destroys it; later creates
// of that image and shape restore from the snapshot. The snapshot is
// keyed by the image's content ID: a rebuilt image gets a new one, and the
// old ones are deleted once the new one exists. Creates that ask for a
// bigger disk than the image's boot cold (a snapshot's disk is fixed).
//
// A clone is told its own identity, token, environment and clock by
// /init, as every restored sandbox is.

// warmPrefix starts the names of warm snapshot templates; users' template
// names cannot take it (makeTemplate).
const warmPrefix = "warm-"

// warmSandboxPrefix starts the IDs of the sandboxes warm-up builds boot.
const warmSandboxPrefix = "warm"

// warmName is the warm snapshot of image template image (content ID
// imageID) for a machine shape.
func warmName(image, imageID string, vcpus, memoryMB int) string {
	id := imageID
	if len(id) > 12 {
		id = id[:12]
	}
	return fmt.Sprintf("%s%s-%dc%dm-%s", warmPrefix, image, vcpus, memoryMB, id)
}

func isWarm(name string) bool { return strings.HasPrefix(name, warmPrefix) }

// warmer runs the background builds: one at a time per name.
type warmer struct {
	mu       sync.Mutex
	building map[string]bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func newWarmer() *warmer {
	ctx, cancel := context.WithCancel(context.Background())
	return &warmer{building: map[string]bool{}, ctx: ctx, cancel: cancel}
}

func (w *warmer) stop() {
	w.cancel()
	w.wg.Wait()
}

// warmTemplate returns the warm snapshot for a create of image template
// tpl with the request's shape, or nil when there is none (yet).
func (m *Manager) warmTemplate(tpl *Template, o CreateOptions, vcpus, memoryMB int) *Template {
	if !m.cfg.WarmImages || tpl.isSnapshot() || !tpl.warmable() {
		return nil
	}
	if o.DiskMB != 0 && o.DiskMB != tpl.diskMB() {
		return nil
	}
	w, err := m.readTemplate(warmName(tpl.Name, tpl.ImageID, vcpus, memoryMB))
	if err != nil {
		return nil
	}
	return w
}

// warmable: only the image store's templates get warm snapshots (not
// users' flattened images, which are rarer and have their own lifetimes).
func (t *Template) warmable() bool { return t.Kind == KindImage && t.Dir == "" && t.ImageID != "" }

// startWarming builds the warm snapshot of image template tpl for a shape
// in the background, unless it exists or is being built. The build holds
// one sandbox's capacity while it runs; when capacity is short it gives
// up (the next cold create tries again).
func (m *Manager) startWarming(tpl *Template, vcpus, memoryMB int) {
	if !m.cfg.WarmImages || !tpl.warmable() {
		return
	}
	name := warmName(tpl.Name, tpl.ImageID, vcpus, memoryMB)
	if _, err := m.readTemplate(name); err == nil {
		return
	}
	w := m.warm
	w.mu.Lock()
	if w.building[name] || w.ctx.Err() != nil {
		w.mu.Unlock()
		return
	}
	w.building[name] = true
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		defer func() {
			w.mu.Lock()
			delete(w.building, name)
			w.mu.Unlock()
		}()
		start := m.now()
		if err := m.buildWarm(w.ctx, tpl, name, vcpus, memoryMB); err != nil {
			m.log.WarnContext(w.ctx, "warm snapshot not built", "template", name, "err", err)
			return
		}
		m.log.InfoContext(w.ctx, "warm snapshot ready", "template", name, "took", m.now().Sub(start).Round(time.Millisecond))
		m.dropStaleWarm(tpl.Name, name)
	}()
}

func (m *Manager) buildWarm(ctx context.Context, tpl *Template, name string, vcpus, memoryMB int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*m.cfg.BootTimeout)
	defer cancel()
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := warmSandboxPrefix + hex.EncodeToString(b[:])
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	if _, err := m.Create(ctx, CreateOptions{
		ID: id, Template: tpl.Name, VCPUs: vcpus, MemoryMB: memoryMB, AccessToken: hex.EncodeToString(tok),
		noWarm: true,
	}); err != nil {
		return err
	}
	defer func() {
		// The build's own sandbox goes whatever happens (even when the
		// manager is stopping).
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := m.Destroy(dctx, id); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.ErrorContext(dctx, "destroy the warm-up sandbox", "sandbox", id, "err", err)
		}
	}()
	_, err := m.makeTemplate(ctx, id, name, KindSnapshot, useWarm)
	return err
}

// dropStaleWarm deletes the warm snapshots of image template image that
// belong to an older build of it (another content ID).
func (m *Manager) dropStaleWarm(image, current string) {
	ts, err := m.allTemplates()
	if err != nil {
		return
	}
	id := current[strings.LastIndexByte(current, '-'):]
	for _, t := range ts {
		if isWarm(t.Name) && strings.HasPrefix(t.Name, warmPrefix+image+"-") && !strings.HasSuffix(t.Name, id) {
			if err := m.DeleteTemplate(t.Name); err != nil {
				m.log.Warn("delete a stale warm snapshot", "template", t.Name, "err", err)
			}
		}
	}
}
