package envd

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"

	"github.com/fsnotify/fsnotify"

	pb "github.com/capsulehq/capsule/gen/envd/filesystem"
)

// errWatcherClosed is a watcher's error after it was closed on purpose.
var errWatcherClosed = errors.New("watcher closed")

// maxPendingEvents bounds the buffer of a polling watcher nobody polls; the
// watcher fails when it is exceeded rather than growing without limit.
const maxPendingEvents = 100_000

// watcherRegistry owns every live directory watcher: those behind WatchDir
// streams and the polling ones (CreateWatcher), which it also names.
type watcherRegistry struct {
	mu   sync.Mutex
	live map[*dirWatcher]struct{}
	byID map[string]*pollingWatcher
}

func newWatcherRegistry() *watcherRegistry {
	return &watcherRegistry{
		live: map[*dirWatcher]struct{}{},
		byID: map[string]*pollingWatcher{},
	}
}

// open starts a watcher on root and registers it; release it when done.
func (r *watcherRegistry) open(root string, recursive, includeEntry bool, log *slog.Logger) (*dirWatcher, error) {
	w, err := startDirWatcher(root, recursive, includeEntry, log)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.live[w] = struct{}{}
	r.mu.Unlock()
	return w, nil
}

// release stops a watcher and forgets it.
func (r *watcherRegistry) release(w *dirWatcher) {
	r.mu.Lock()
	delete(r.live, w)
	r.mu.Unlock()
	w.close()
}

// addPolling turns a registered watcher into a polling one and returns its
// new id.
func (r *watcherRegistry) addPolling(w *dirWatcher) (string, error) {
	id, err := newWatcherID()
	if err != nil {
		return "", fmt.Errorf("watcher id: %w", err)
	}
	pw := &pollingWatcher{w: w}
	r.mu.Lock()
	r.byID[id] = pw
	r.mu.Unlock()
	go pw.collect()
	return id, nil
}

// polling returns the polling watcher with the given id, or nil.
func (r *watcherRegistry) polling(id string) *pollingWatcher {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

// removePolling stops and forgets a polling watcher; false if unknown.
func (r *watcherRegistry) removePolling(id string) bool {
	r.mu.Lock()
	pw, ok := r.byID[id]
	delete(r.byID, id)
	r.mu.Unlock()
	if ok {
		r.release(pw.w)
	}
	return ok
}

// count reports how many watchers are live (for tests and metrics).
func (r *watcherRegistry) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.live)
}

// closeAll stops every watcher; streams end with an unavailable error.
func (r *watcherRegistry) closeAll() {
	r.mu.Lock()
	live := r.live
	r.live = map[*dirWatcher]struct{}{}
	r.byID = map[string]*pollingWatcher{}
	r.mu.Unlock()
	for w := range live {
		w.close()
	}
}

// newWatcherID returns "w" followed by 20 random [a-z0-9] characters.
func newWatcherID() (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var raw [20]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	id := make([]byte, 0, 1+len(raw))
	id = append(id, 'w')
	for _, b := range raw {
		id = append(id, alphabet[int(b)%len(alphabet)]) // 256 % 36 bias is irrelevant for an opaque id
	}
	return string(id), nil
}

// pollingWatcher buffers a watcher's events until GetWatcherEvents.
type pollingWatcher struct {
	w *dirWatcher

	mu      sync.Mutex
	pending []*pb.FilesystemEvent
	failed  bool
}

// collect moves events into the buffer until the watcher stops. An
// overflowing buffer stops the watcher; failed is only set once it has
// stopped, so that its error is final when drain reports the failure.
func (p *pollingWatcher) collect() {
	for ev := range p.w.events() {
		p.mu.Lock()
		full := len(p.pending) >= maxPendingEvents
		if !full {
			p.pending = append(p.pending, ev)
		}
		p.mu.Unlock()
		if full {
			p.w.fail(fmt.Errorf("more than %d unread events", maxPendingEvents))
		}
	}
	p.mu.Lock()
	p.failed = true
	p.mu.Unlock()
}

// drain returns and clears the buffer; failed reports that the watcher has
// stopped, in which case its error explains why.
func (p *pollingWatcher) drain() (events []*pb.FilesystemEvent, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed {
		return nil, true
	}
	events, p.pending = p.pending, nil
	return events, false
}

// dirWatcher turns fsnotify notifications on a directory (and, when
// recursive, every directory below it, including ones created later) into
// FilesystemEvents named relative to the root.
type dirWatcher struct {
	root         string
	recursive    bool
	includeEntry bool
	log          *slog.Logger

	fsw  *fsnotify.Watcher
	out  chan *pb.FilesystemEvent
	done chan struct{}
	once sync.Once

	// Owned by the run goroutine once it has started.
	dirs     map[string]struct{} // directories with an inotify watch
	names    *ownerNames
	failErr  chan error // fail() hands an error to run
	finalErr error      // why run stopped; read after out is closed
}

// startDirWatcher watches root (and its subtree when recursive) and starts
// delivering events on events().
func startDirWatcher(root string, recursive, includeEntry bool, log *slog.Logger) (*dirWatcher, error) {
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("create inotify watcher: %w", err)
	}
	w := &dirWatcher{
		root: root, recursive: recursive, includeEntry: includeEntry, log: log,
		fsw:     fsw,
		out:     make(chan *pb.FilesystemEvent, 64),
		done:    make(chan struct{}),
		dirs:    map[string]struct{}{},
		names:   newOwnerNames(),
		failErr: make(chan error, 1),
	}
	if err := w.add(root); err != nil {
		fsw.Close()
		return nil, err
	}
	if recursive {
		if _, err := w.addTree(root, false); err != nil {
			fsw.Close()
			return nil, err
		}
	}
	go w.run()
	return w, nil
}

// events delivers the watcher's events; it is closed when the watcher stops.
func (w *dirWatcher) events() <-chan *pb.FilesystemEvent { return w.out }

// err says why the watcher stopped; valid once events() is closed.
func (w *dirWatcher) err() error { return w.finalErr }

// close stops the watcher and releases its inotify instance.
func (w *dirWatcher) close() {
	w.once.Do(func() {
		close(w.done)
		w.fsw.Close()
	})
}

// fail stops the watcher with err (first failure wins).
func (w *dirWatcher) fail(err error) {
	select {
	case w.failErr <- err:
	default:
	}
}

func (w *dirWatcher) run() {
	defer close(w.out)
	for {
		select {
		case <-w.done:
			w.finalErr = errWatcherClosed
			return
		case err := <-w.failErr:
			w.finalErr = err
			w.fsw.Close()
			return
		case err, ok := <-w.fsw.Errors:
			if !ok {
				w.finalErr = w.stoppedError()
				return
			}
			w.finalErr = fmt.Errorf("inotify: %w", err)
			w.fsw.Close()
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				w.finalErr = w.stoppedError()
				return
			}
			for _, fe := range w.translate(ev) {
				select {
				case w.out <- fe:
				case <-w.done:
					w.finalErr = errWatcherClosed
					return
				}
			}
		}
	}
}

// stoppedError is the error of a watcher whose fsnotify channels closed.
func (w *dirWatcher) stoppedError() error {
	select {
	case <-w.done:
		return errWatcherClosed
	default:
		return errors.New("inotify watcher stopped")
	}
}

// opOrder is the order in which the operations of one notification are
// reported (spec §6.5).
var opOrder = []struct {
	op fsnotify.Op
	t  pb.EventType
}{
	{fsnotify.Create, pb.EventType_EVENT_TYPE_CREATE},
	{fsnotify.Rename, pb.EventType_EVENT_TYPE_RENAME},
	{fsnotify.Chmod, pb.EventType_EVENT_TYPE_CHMOD},
	{fsnotify.Write, pb.EventType_EVENT_TYPE_WRITE},
	{fsnotify.Remove, pb.EventType_EVENT_TYPE_REMOVE},
}

// translate maps one notification to its events, keeping the set of
// watched directories in step when recursive.
func (w *dirWatcher) translate(ev fsnotify.Event) []*pb.FilesystemEvent {
	var out []*pb.FilesystemEvent
	for _, o := range opOrder {
		if !ev.Has(o.op) {
			continue
		}
		out = append(out, w.event(ev.Name, o.t))
		if !w.recursive {
			continue
		}
		switch o.op {
		case fsnotify.Create:
			out = append(out, w.watchNewDir(ev.Name)...)
		case fsnotify.Rename, fsnotify.Remove:
			w.forget(ev.Name)
		}
	}
	return out
}

// event builds one FilesystemEvent for the absolute path p.
func (w *dirWatcher) event(p string, t pb.EventType) *pb.FilesystemEvent {
	name, err := filepath.Rel(w.root, p)
	if err != nil {
		name = p
	}
	fe := &pb.FilesystemEvent{Name: name, Type: t}
	if w.includeEntry && (t == pb.EventType_EVENT_TYPE_CREATE || t == pb.EventType_EVENT_TYPE_WRITE || t == pb.EventType_EVENT_TYPE_CHMOD) {
		if e, err := statEntry(p, w.names); err == nil {
			fe.Entry = e
		}
	}
	return fe
}

// watchNewDir starts watching a directory that appeared under a recursive
// watch. Entries it already holds were created before the watch existed,
// so they are reported as created too.
func (w *dirWatcher) watchNewDir(p string) []*pb.FilesystemEvent {
	if _, ok := w.dirs[p]; ok {
		return nil
	}
	created, err := w.addTree(p, true)
	if err != nil && !vanished(err) {
		w.log.Warn("watch new directory", "path", p, "err", err)
	}
	events := make([]*pb.FilesystemEvent, 0, len(created))
	for _, c := range created {
		events = append(events, w.event(c, pb.EventType_EVENT_TYPE_CREATE))
	}
	return events
}

// addTree watches every directory below top (and top itself unless it is
// the root, which is already watched), without following symlinks. With
// collect it returns the paths found below top.
func (w *dirWatcher) addTree(top string, collect bool) ([]string, error) {
	var found []string
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != top && vanished(err) {
				return skipEntry(d)
			}
			return err
		}
		if p != top && collect {
			found = append(found, p)
		}
		if !d.IsDir() || p == w.root {
			return nil
		}
		if err := w.add(p); err != nil {
			if vanished(err) {
				return filepath.SkipDir
			}
			return err
		}
		return nil
	})
	return found, err
}

func (w *dirWatcher) add(dir string) error {
	if err := w.fsw.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	w.dirs[dir] = struct{}{}
	return nil
}

// forget drops the watches of p and of every directory below it after p
// was moved away or deleted (a moved directory keeps its inotify watches,
// which would otherwise report under the old name).
func (w *dirWatcher) forget(p string) {
	prefix := p + string(filepath.Separator)
	for d := range w.dirs {
		if d == p || strings.HasPrefix(d, prefix) {
			_ = w.fsw.Remove(d) // already gone when the kernel dropped it
			delete(w.dirs, d)
		}
	}
}
