package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
)

// recover adopts what a previous agent left in DataDir. Paused sandboxes
// are adopted as they are. A sandbox whose machine was running (or half
// way through a transition) cannot be resumed consistently — its disk has
// moved on from its last memory snapshot — so its VMM is killed and the
// sandbox removed. Runtime directories without a sandbox, and template
// directories no template or sandbox uses, are deleted.
func (m *Manager) recover(ctx context.Context) error {
	entries, err := os.ReadDir(m.sandboxesDir())
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(m.sandboxesDir(), e.Name())
		rec, err := readRecord(dir)
		if err != nil {
			m.log.WarnContext(ctx, "removing a sandbox directory without a readable state", "dir", dir, "err", err)
			_ = os.RemoveAll(dir)
			continue
		}
		if rec.State == StatePaused && rec.Snapshot != "" {
			m.boxes[rec.ID] = &box{rec: rec, lastActive: m.now()}
			m.used.diskMB += rec.DiskMB
			m.log.InfoContext(ctx, "adopted paused sandbox", "id", rec.ID)
			continue
		}
		if err := m.cfg.Driver.Cleanup(ctx, m.runDir(rec.ID)); err != nil {
			m.log.ErrorContext(ctx, "kill a machine left by the previous agent", "id", rec.ID, "err", err)
		}
		_ = os.RemoveAll(m.runDir(rec.ID))
		_ = os.RemoveAll(dir)
		m.log.WarnContext(ctx, "removed a sandbox whose machine did not survive the agent", "id", rec.ID, "state", rec.State)
	}
	// Runtime directories of machines nobody owns any more.
	if runs, err := os.ReadDir(m.cfg.RunDir); err == nil {
		for _, e := range runs {
			if _, ok := m.boxes[e.Name()]; !ok {
				dir := filepath.Join(m.cfg.RunDir, e.Name())
				if err := m.cfg.Driver.Cleanup(ctx, dir); err != nil {
					m.log.ErrorContext(ctx, "kill a machine left by the previous agent", "dir", dir, "err", err)
				}
				_ = os.RemoveAll(dir)
			}
		}
	}
	m.collectTemplateDirs()
	return nil
}

// collectTemplateDirs is the start-up collection of template directories:
// every directory that no template index names (left by a delete or an
// overwrite while something still backed onto it, or by a crash half way
// through makeTemplate) is given up, and deleted unless a template or a
// sandbox still reads through it, directly or down its backing chain
// (referencedTemplateDirs) — the rule DeleteTemplate follows. Temporary
// index files are removed.
func (m *Manager) collectTemplateDirs() {
	entries, err := os.ReadDir(m.templatesDir())
	if err != nil {
		return
	}
	live := map[string]bool{}
	if ts, err := m.allTemplates(); err == nil {
		for _, t := range ts {
			live[t.Dir] = true
		}
	}
	m.gcMu.Lock()
	for _, e := range entries {
		dir := filepath.Join(m.templatesDir(), e.Name())
		if !e.IsDir() {
			if strings.HasSuffix(e.Name(), ".tmp") {
				_ = os.Remove(dir)
			}
			continue
		}
		if !live[dir] {
			m.orphans[dir] = true
		}
	}
	m.gcMu.Unlock()
	m.collectTemplates()
}
