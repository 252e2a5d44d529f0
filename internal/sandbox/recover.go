package sandbox

import (
	"context"
	"errors"
	"io/fs"
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

// collectTemplateDirs deletes template directories that no template index
// names and no sandbox disk uses (left by an overwrite or delete while
// sandboxes still used them, or by a crash).
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
	for _, e := range entries {
		dir := filepath.Join(m.templatesDir(), e.Name())
		if !e.IsDir() || live[dir] {
			if strings.HasSuffix(e.Name(), ".tmp") {
				_ = os.Remove(dir)
			}
			continue
		}
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		m.dropTemplateDir(dir)
	}
}
