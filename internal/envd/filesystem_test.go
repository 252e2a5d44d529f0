package envd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/envd/filesystem"
	"github.com/capsulehq/capsule/gen/envd/filesystem/filesystemconnect"
	"github.com/capsulehq/capsule/internal/envd"
)

// fsEnv is a running envd with a filesystem client and a scratch directory.
type fsEnv struct {
	srv    *envd.Server
	url    string
	client filesystemconnect.FilesystemClient
	dir    string
}

func newFSEnv(t *testing.T) *fsEnv {
	t.Helper()
	srv := envd.New(envd.Config{})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ts.Close()
		srv.Close()
	})
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &fsEnv{srv: srv, url: ts.URL, client: filesystemconnect.NewFilesystemClient(http.DefaultClient, ts.URL), dir: dir}
}

// path joins elements to the scratch directory.
func (e *fsEnv) path(elem ...string) string {
	return filepath.Join(append([]string{e.dir}, elem...)...)
}

// post sends a raw request and returns the status and body.
func (e *fsEnv) post(t *testing.T, path, contentType, body string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// setToken makes envd require an access token, as POST /init does.
func (e *fsEnv) setToken(t *testing.T, token string) {
	t.Helper()
	if st, body := e.post(t, "/init", "application/json", `{"accessToken":"`+token+`"}`, nil); st != http.StatusNoContent {
		t.Fatalf("init: %d %s", st, body)
	}
}

// as builds a request that selects user (none when empty) and carries the
// given extra headers.
func as[T any](msg *T, user string, hdr ...string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if user != "" {
		req.Header().Set("Authorization", basicAuth(user))
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header().Set(hdr[i], hdr[i+1])
	}
	return req
}

func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// requireCond skips (or fails under CAPSULE_TEST_STRICT=1) when the
// environment lacks something a test needs.
func requireCond(t *testing.T, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CAPSULE_TEST_STRICT") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// otherUser returns an unprivileged account to hand files to.
func otherUser(t *testing.T) *user.User {
	t.Helper()
	requireCond(t, os.Geteuid() == 0, "ownership tests need root")
	u, err := user.Lookup("nobody")
	requireCond(t, err == nil, "user nobody is missing")
	return u
}

func owner(t *testing.T, p string) (uid, gid string) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprint(st.Uid), fmt.Sprint(st.Gid)
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// homeScratch creates a directory in root's home for relative-path tests
// and returns its name relative to that home.
func homeScratch(t *testing.T) (rel, abs string) {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	requireCond(t, u.Username == "root", "relative-path tests run as root")
	abs, err = os.MkdirTemp(u.HomeDir, "envd-fs-test-")
	requireCond(t, err == nil, "home directory is not writable")
	t.Cleanup(func() { os.RemoveAll(abs) })
	return filepath.Base(abs), abs
}

// selfNames returns the names of the test process' user and group, which
// own the files the tests create.
func selfNames(t *testing.T) (string, string) {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	return u.Username, g.Name
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("error %v (code %v), want %v", err, connect.CodeOf(err), code)
	}
}

func TestFilesystemStat(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("file.txt"), "hello")
	if err := os.Mkdir(e.path("dir"), 0o750); err != nil {
		t.Fatal(err)
	}
	symlink(t, "file.txt", e.path("link"))
	symlink(t, e.path("dir"), e.path("dirlink"))
	symlink(t, "link", e.path("chain"))
	symlink(t, "nowhere", e.path("dangling"))
	before := time.Now().Add(-time.Minute)
	userName, groupName := selfNames(t)

	ptr := func(s string) *string { return &s }
	tests := []struct {
		name     string
		path     string
		typ      pb.FileType
		size     int64
		mode     uint32
		perms    string
		target   *string
		wantCode connect.Code
	}{
		{name: "file", path: e.path("file.txt"), typ: pb.FileType_FILE_TYPE_FILE, size: 5, mode: 0o644, perms: "-rw-r--r--"},
		{name: "dir", path: e.path("dir"), typ: pb.FileType_FILE_TYPE_DIRECTORY, size: -1, mode: 0o750, perms: "drwxr-x---"},
		{name: "symlink to file", path: e.path("link"), typ: pb.FileType_FILE_TYPE_FILE, size: int64(len("file.txt")), mode: 0o644, perms: "Lrwxrwxrwx", target: ptr(e.path("file.txt"))},
		{name: "symlink to dir", path: e.path("dirlink"), typ: pb.FileType_FILE_TYPE_DIRECTORY, size: int64(len(e.path("dir"))), mode: 0o750, perms: "Lrwxrwxrwx", target: ptr(e.path("dir"))},
		{name: "symlink chain", path: e.path("chain"), typ: pb.FileType_FILE_TYPE_FILE, size: 4, mode: 0o644, perms: "Lrwxrwxrwx", target: ptr(e.path("file.txt"))},
		{name: "dangling symlink", path: e.path("dangling"), typ: pb.FileType_FILE_TYPE_UNSPECIFIED, size: 7, mode: 0o777, perms: "Lrwxrwxrwx", target: ptr(e.path("dangling"))},
		{name: "unclean path", path: e.dir + "/dir/../file.txt", typ: pb.FileType_FILE_TYPE_FILE, size: 5, mode: 0o644, perms: "-rw-r--r--"},
		{name: "missing", path: e.path("missing"), wantCode: connect.CodeNotFound},
		{name: "below a file", path: e.path("file.txt", "x"), wantCode: connect.CodeNotFound},
		{name: "tilde user", path: "~nobody/x", wantCode: connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: tc.path}, ""))
			if tc.wantCode != 0 {
				wantCode(t, err, tc.wantCode)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := res.Msg.GetEntry()
			clean := filepath.Clean(tc.path)
			if got.GetName() != filepath.Base(clean) || got.GetPath() != clean || got.GetType() != tc.typ ||
				got.GetMode() != tc.mode || got.GetPermissions() != tc.perms {
				t.Errorf("entry %v", got)
			}
			if tc.size >= 0 && got.GetSize() != tc.size {
				t.Errorf("size %d, want %d", got.GetSize(), tc.size)
			}
			if got.GetOwner() != userName || got.GetGroup() != groupName {
				t.Errorf("owner %s:%s", got.GetOwner(), got.GetGroup())
			}
			if mt := got.GetModifiedTime().AsTime(); mt.Before(before) || mt.After(time.Now().Add(time.Minute)) {
				t.Errorf("modified time %v", mt)
			}
			if (tc.target == nil) != (got.SymlinkTarget == nil) || (tc.target != nil && *tc.target != got.GetSymlinkTarget()) {
				t.Errorf("symlink target %v, want %v", got.SymlinkTarget, tc.target)
			}
			if got.Metadata != nil {
				t.Errorf("metadata %v", got.Metadata)
			}
		})
	}
}

func TestFilesystemUserAndRelativePaths(t *testing.T) {
	e := newFSEnv(t)
	rel, abs := homeScratch(t)
	writeFile(t, filepath.Join(abs, "hello.txt"), "hi")

	for _, p := range []string{rel + "/hello.txt", "~/" + rel + "/hello.txt", "./" + rel + "/sub/../hello.txt"} {
		for _, u := range []string{"", "root"} {
			res, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: p}, u))
			if err != nil {
				t.Fatalf("stat %q as %q: %v", p, u, err)
			}
			if got := res.Msg.GetEntry().GetPath(); got != filepath.Join(abs, "hello.txt") {
				t.Errorf("stat %q as %q: path %s", p, u, got)
			}
		}
	}

	_, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: abs}, "no-such-user"))
	wantCode(t, err, connect.CodeUnauthenticated)
	if !strings.Contains(err.Error(), "invalid username: 'no-such-user'") {
		t.Errorf("message %q", err)
	}

	// A relative path of another user resolves to that user's home.
	u := otherUser(t)
	res, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: "x"}, u.Username))
	if connect.CodeOf(err) != connect.CodeNotFound || res != nil {
		t.Fatalf("stat as %s: %v", u.Username, err)
	}
	if want := fmt.Sprintf("path '%s' does not exist", filepath.Join(u.HomeDir, "x")); !strings.Contains(err.Error(), want) {
		t.Errorf("message %q, want %q", err, want)
	}
}

func TestFilesystemListDir(t *testing.T) {
	e := newFSEnv(t)
	for _, f := range []string{"b.txt", "a/x.txt", "a/deep/y.txt", "a/deep/deeper/z.txt", "c/w.txt"} {
		writeFile(t, e.path("root", f), f)
	}
	symlink(t, e.path("root", "c"), e.path("root", "clink")) // not followed
	symlink(t, "gone", e.path("root", "dangling"))
	symlink(t, e.path("root"), e.path("rootlink"))
	writeFile(t, e.path("plain"), "x")
	symlink(t, "loop2", e.path("loop1"))
	symlink(t, "loop1", e.path("loop2"))

	tests := []struct {
		name  string
		path  string
		depth uint32
		want  []string // paths relative to the scratch dir
		code  connect.Code
	}{
		{name: "depth 0 means 1", path: e.path("root"), depth: 0,
			want: []string{"root/a", "root/b.txt", "root/c", "root/clink", "root/dangling"}},
		{name: "depth 1", path: e.path("root"), depth: 1,
			want: []string{"root/a", "root/b.txt", "root/c", "root/clink", "root/dangling"}},
		{name: "depth 2", path: e.path("root"), depth: 2,
			want: []string{"root/a", "root/a/deep", "root/a/x.txt", "root/b.txt", "root/c", "root/c/w.txt", "root/clink", "root/dangling"}},
		{name: "depth 10", path: e.path("root"), depth: 10,
			want: []string{"root/a", "root/a/deep", "root/a/deep/deeper", "root/a/deep/deeper/z.txt", "root/a/deep/y.txt", "root/a/x.txt", "root/b.txt", "root/c", "root/c/w.txt", "root/clink", "root/dangling"}},
		{name: "through a symlink", path: e.path("rootlink", "a"), depth: 1,
			want: []string{"rootlink/a/deep", "rootlink/a/x.txt"}},
		{name: "not a directory", path: e.path("plain"), code: connect.CodeInvalidArgument},
		{name: "missing", path: e.path("missing"), code: connect.CodeNotFound},
		{name: "symlink loop", path: e.path("loop1"), code: connect.CodeFailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := e.client.ListDir(context.Background(), as(&pb.ListDirRequest{Path: tc.path, Depth: tc.depth}, ""))
			if tc.code != 0 {
				wantCode(t, err, tc.code)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, en := range res.Msg.GetEntries() {
				rel, _ := filepath.Rel(e.dir, en.GetPath())
				got = append(got, rel)
				if en.GetName() != filepath.Base(en.GetPath()) {
					t.Errorf("entry %s named %s", en.GetPath(), en.GetName())
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("entries\n got %v\nwant %v", got, tc.want)
			}
		})
	}

	// Symlink entries describe their targets.
	res, err := e.client.ListDir(context.Background(), as(&pb.ListDirRequest{Path: e.path("root")}, ""))
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]pb.FileType{}
	for _, en := range res.Msg.GetEntries() {
		types[en.GetName()] = en.GetType()
	}
	if types["clink"] != pb.FileType_FILE_TYPE_DIRECTORY || types["dangling"] != pb.FileType_FILE_TYPE_UNSPECIFIED ||
		types["a"] != pb.FileType_FILE_TYPE_DIRECTORY || types["b.txt"] != pb.FileType_FILE_TYPE_FILE {
		t.Errorf("types %v", types)
	}
}

func TestFilesystemMakeDir(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("file"), "x")

	res, err := e.client.MakeDir(context.Background(), as(&pb.MakeDirRequest{Path: e.path("a", "b", "c")}, ""))
	if err != nil {
		t.Fatal(err)
	}
	en := res.Msg.GetEntry()
	if en.GetPath() != e.path("a", "b", "c") || en.GetType() != pb.FileType_FILE_TYPE_DIRECTORY ||
		en.GetMode() != 0o755 || en.GetPermissions() != "drwxr-xr-x" {
		t.Errorf("entry %v", en)
	}

	tests := []struct {
		name string
		path string
		code connect.Code
	}{
		{"existing directory", e.path("a", "b"), connect.CodeAlreadyExists},
		{"existing file", e.path("file"), connect.CodeInvalidArgument},
		{"below a file", e.path("file", "sub"), connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		_, err := e.client.MakeDir(context.Background(), as(&pb.MakeDirRequest{Path: tc.path}, ""))
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
	}

	// Directories made for another user belong to them.
	u := otherUser(t)
	if _, err := e.client.MakeDir(context.Background(), as(&pb.MakeDirRequest{Path: e.path("theirs", "sub")}, u.Username)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{e.path("theirs"), e.path("theirs", "sub")} {
		if uid, gid := owner(t, p); uid != u.Uid || gid != u.Gid {
			t.Errorf("%s owned by %s:%s, want %s:%s", p, uid, gid, u.Uid, u.Gid)
		}
	}
	if uid, _ := owner(t, e.dir); uid != "0" {
		t.Errorf("existing parent changed owner to %s", uid)
	}
}

func TestFilesystemMove(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("src.txt"), "moved")
	writeFile(t, e.path("other.txt"), "replaces")
	writeFile(t, e.path("victim.txt"), "old")

	res, err := e.client.Move(context.Background(), as(&pb.MoveRequest{Source: e.path("src.txt"), Destination: e.path("new", "parent", "dst.txt")}, ""))
	if err != nil {
		t.Fatal(err)
	}
	if en := res.Msg.GetEntry(); en.GetPath() != e.path("new", "parent", "dst.txt") || en.GetName() != "dst.txt" || en.GetSize() != 5 {
		t.Errorf("entry %v", en)
	}
	if _, err := os.Stat(e.path("src.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("source still there: %v", err)
	}
	if fi, err := os.Stat(e.path("new")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("created parent: %v %v", fi, err)
	}

	// Replacing an existing file.
	if _, err := e.client.Move(context.Background(), as(&pb.MoveRequest{Source: e.path("other.txt"), Destination: e.path("victim.txt")}, "")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(e.path("victim.txt")); string(b) != "replaces" {
		t.Errorf("destination holds %q", b)
	}

	_, err = e.client.Move(context.Background(), as(&pb.MoveRequest{Source: e.path("missing"), Destination: e.path("x")}, ""))
	wantCode(t, err, connect.CodeNotFound)
}

func TestFilesystemRemove(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("tree", "a", "b.txt"), "x")
	writeFile(t, e.path("single"), "x")
	for _, p := range []string{e.path("tree"), e.path("single"), e.path("missing"), e.path("missing", "deeper")} {
		if _, err := e.client.Remove(context.Background(), as(&pb.RemoveRequest{Path: p}, "")); err != nil {
			t.Errorf("remove %s: %v", p, err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists: %v", p, err)
		}
	}
}

func TestFilesystemAccessToken(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("f"), "x")
	e.setToken(t, "s3cret")

	_, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: e.path("f")}, ""))
	wantCode(t, err, connect.CodeUnauthenticated)
	_, err = e.client.Stat(context.Background(), as(&pb.StatRequest{Path: e.path("f")}, "", "X-Access-Token", "wrong"))
	wantCode(t, err, connect.CodeUnauthenticated)
	if _, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: e.path("f")}, "root", "X-Access-Token", "s3cret")); err != nil {
		t.Fatal(err)
	}

	st, body := e.post(t, "/filesystem.Filesystem/Stat", "application/json", `{"path":"/"}`, map[string]string{"Connect-Protocol-Version": "1"})
	if st != http.StatusUnauthorized || !strings.Contains(body, `"code":401`) {
		t.Errorf("raw call without token: %d %s", st, body)
	}

	// Streams are refused too.
	s, err := e.client.WatchDir(context.Background(), as(&pb.WatchDirRequest{Path: e.dir}, ""))
	if err == nil {
		for s.Receive() {
			t.Error("received a watch message without a token")
		}
		err = s.Err()
	}
	wantCode(t, err, connect.CodeUnauthenticated)
}

// TestFilesystemRawConnectJSON calls the unary RPCs the way the JS SDK
// does: application/json bodies with Connect-Protocol-Version: 1.
func TestFilesystemRawConnectJSON(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("f.txt"), "hello")
	if err := os.Mkdir(e.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	hdr := map[string]string{"Connect-Protocol-Version": "1", "Authorization": basicAuth("root")}
	userName, groupName := selfNames(t)

	st, body := e.post(t, "/filesystem.Filesystem/Stat", "application/json", `{"path":"`+e.path("f.txt")+`"}`, hdr)
	if st != http.StatusOK {
		t.Fatalf("stat: %d %s", st, body)
	}
	var stat struct {
		Entry map[string]any `json:"entry"`
	}
	if err := json.Unmarshal([]byte(body), &stat); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"name": "f.txt", "type": "FILE_TYPE_FILE", "path": e.path("f.txt"), "size": "5",
		"mode": float64(420), "permissions": "-rw-r--r--", "owner": userName, "group": groupName,
	}
	for k, v := range want {
		if stat.Entry[k] != v {
			t.Errorf("entry[%s] = %#v, want %#v", k, stat.Entry[k], v)
		}
	}
	if mt, _ := stat.Entry["modifiedTime"].(string); !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$`).MatchString(mt) {
		t.Errorf("modifiedTime %q", mt)
	}

	tests := []struct {
		name, method, body string
		status             int
		code               string
	}{
		{"list", "ListDir", `{"path":"` + e.dir + `","depth":1}`, 200, ""},
		{"snake_case and unknown fields", "ListDir", `{"path":"` + e.dir + `","depth":1,"bogus":{"x":1}}`, 200, ""},
		{"make existing dir", "MakeDir", `{"path":"` + e.path("d") + `"}`, 409, "already_exists"},
		{"make dir", "MakeDir", `{"path":"` + e.path("d2") + `"}`, 200, ""},
		{"stat missing", "Stat", `{"path":"` + e.path("nope") + `"}`, 404, "not_found"},
		{"list a file", "ListDir", `{"path":"` + e.path("f.txt") + `"}`, 400, "invalid_argument"},
		{"bad json", "Stat", `{"path":`, 400, "invalid_argument"},
		{"wrong field type", "Stat", `{"path":5}`, 400, "invalid_argument"},
		{"wrong enum/number type", "ListDir", `{"path":"/","depth":"deep"}`, 400, "invalid_argument"},
		{"move missing", "Move", `{"source":"` + e.path("nope") + `","destination":"` + e.path("x") + `"}`, 404, "not_found"},
		{"remove missing", "Remove", `{"path":"` + e.path("nope") + `"}`, 200, ""},
		{"unknown watcher", "GetWatcherEvents", `{"watcherId":"wnope"}`, 404, "not_found"},
		{"remove unknown watcher", "RemoveWatcher", `{"watcher_id":"wnope"}`, 404, "not_found"},
		{"watch a file", "CreateWatcher", `{"path":"` + e.path("f.txt") + `"}`, 400, "invalid_argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.post(t, "/filesystem.Filesystem/"+tc.method, "application/json", tc.body, hdr)
			var m map[string]any
			if err := json.Unmarshal([]byte(body), &m); err != nil {
				t.Fatalf("body %q is not JSON", body)
			}
			if st != tc.status || (tc.code != "" && m["code"] != tc.code) {
				t.Fatalf("status %d body %s, want %d %s", st, body, tc.status, tc.code)
			}
			if tc.code != "" {
				if msg, _ := m["message"].(string); msg == "" {
					t.Errorf("error without message: %s", body)
				}
			}
		})
	}
	if st, body := e.post(t, "/filesystem.Filesystem/ListDir", "application/json", `{"path":"`+e.dir+`"}`, hdr); !strings.Contains(body, `"path":"`+e.path("d2")+`"`) {
		t.Errorf("listing after MakeDir: %d %s", st, body)
	}
}

// watchStream collects the messages of a WatchDir stream.
type watchStream struct {
	msgs   chan *pb.WatchDirResponse
	done   chan error
	cancel context.CancelFunc
}

// watch opens a WatchDir stream and waits for its start message.
func (e *fsEnv) watch(t *testing.T, req *connect.Request[pb.WatchDirRequest]) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ws := &watchStream{msgs: make(chan *pb.WatchDirResponse, 1024), done: make(chan error, 1), cancel: cancel}
	t.Cleanup(cancel)
	s, err := e.client.WatchDir(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for s.Receive() {
			ws.msgs <- s.Msg()
		}
		ws.done <- s.Err()
		close(ws.msgs)
	}()
	select {
	case m, ok := <-ws.msgs:
		if !ok {
			t.Fatalf("watch ended before start: %v", <-ws.done)
		}
		if m.GetStart() == nil {
			t.Fatalf("first message %v, want start", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no start message")
	}
	return ws
}

// next returns the next filesystem event matching match, skipping others.
func (ws *watchStream) next(t *testing.T, match func(*pb.FilesystemEvent) bool) *pb.FilesystemEvent {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m, ok := <-ws.msgs:
			if !ok {
				t.Fatalf("stream ended: %v", <-ws.done)
			}
			if ev := m.GetFilesystem(); ev != nil && match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatal("timed out waiting for an event")
		}
	}
}

func isEvent(name string, typ pb.EventType) func(*pb.FilesystemEvent) bool {
	return func(ev *pb.FilesystemEvent) bool { return ev.GetName() == name && ev.GetType() == typ }
}

func TestWatchDirEvents(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("w", "old.txt"), "x")
	ws := e.watch(t, as(&pb.WatchDirRequest{Path: e.path("w")}, ""))

	steps := []struct {
		name string
		do   func() error
		want []*pb.FilesystemEvent
	}{
		{"create", func() error { return os.WriteFile(e.path("w", "new.txt"), []byte("abc"), 0o644) },
			[]*pb.FilesystemEvent{{Name: "new.txt", Type: pb.EventType_EVENT_TYPE_CREATE}, {Name: "new.txt", Type: pb.EventType_EVENT_TYPE_WRITE}}},
		{"chmod", func() error { return os.Chmod(e.path("w", "new.txt"), 0o600) },
			[]*pb.FilesystemEvent{{Name: "new.txt", Type: pb.EventType_EVENT_TYPE_CHMOD}}},
		{"rename", func() error { return os.Rename(e.path("w", "new.txt"), e.path("w", "renamed.txt")) },
			[]*pb.FilesystemEvent{{Name: "new.txt", Type: pb.EventType_EVENT_TYPE_RENAME}, {Name: "renamed.txt", Type: pb.EventType_EVENT_TYPE_CREATE}}},
		{"remove", func() error { return os.Remove(e.path("w", "old.txt")) },
			[]*pb.FilesystemEvent{{Name: "old.txt", Type: pb.EventType_EVENT_TYPE_REMOVE}}},
		{"mkdir", func() error { return os.Mkdir(e.path("w", "sub"), 0o755) },
			[]*pb.FilesystemEvent{{Name: "sub", Type: pb.EventType_EVENT_TYPE_CREATE}}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for _, w := range st.want {
			ev := ws.next(t, func(*pb.FilesystemEvent) bool { return true })
			if ev.GetName() != w.GetName() || ev.GetType() != w.GetType() {
				t.Fatalf("%s: event %v, want %v", st.name, ev, w)
			}
			if ev.Entry != nil {
				t.Errorf("%s: entry without includeEntry: %v", st.name, ev.Entry)
			}
		}
	}

	// Not recursive: nothing from inside sub; the next event is the marker.
	writeFile(t, e.path("w", "sub", "inner.txt"), "x")
	writeFile(t, e.path("w", "marker"), "x")
	if ev := ws.next(t, func(*pb.FilesystemEvent) bool { return true }); ev.GetName() != "marker" {
		t.Errorf("event %v, want marker's create", ev)
	}
}

func TestWatchDirRecursive(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("w", "existing", "f.txt"), "x")
	ws := e.watch(t, as(&pb.WatchDirRequest{Path: e.path("w"), Recursive: true, IncludeEntry: true}, "root"))

	writeFile(t, e.path("w", "existing", "f.txt"), "changed")
	ev := ws.next(t, isEvent("existing/f.txt", pb.EventType_EVENT_TYPE_WRITE))
	if ev.GetEntry().GetPath() != e.path("w", "existing", "f.txt") || ev.GetEntry().GetType() != pb.FileType_FILE_TYPE_FILE {
		t.Errorf("entry %v", ev.GetEntry())
	}

	// A directory created later is watched too, including what is created
	// in it right away.
	if err := os.MkdirAll(e.path("w", "new", "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	ev = ws.next(t, isEvent("new", pb.EventType_EVENT_TYPE_CREATE))
	if ev.GetEntry().GetType() != pb.FileType_FILE_TYPE_DIRECTORY {
		t.Errorf("entry %v", ev.GetEntry())
	}
	ws.next(t, isEvent("new/deeper", pb.EventType_EVENT_TYPE_CREATE))
	writeFile(t, e.path("w", "new", "deeper", "file.txt"), "content")
	ws.next(t, isEvent("new/deeper/file.txt", pb.EventType_EVENT_TYPE_WRITE))

	// A moved directory reports under its new name.
	if err := os.Rename(e.path("w", "new"), e.path("w", "moved")); err != nil {
		t.Fatal(err)
	}
	ws.next(t, isEvent("new", pb.EventType_EVENT_TYPE_RENAME))
	ws.next(t, isEvent("moved", pb.EventType_EVENT_TYPE_CREATE))
	writeFile(t, e.path("w", "moved", "deeper", "file.txt"), "again")
	ev = ws.next(t, func(ev *pb.FilesystemEvent) bool { return ev.GetType() == pb.EventType_EVENT_TYPE_WRITE })
	if ev.GetName() != "moved/deeper/file.txt" {
		t.Errorf("write reported as %q", ev.GetName())
	}

	// Removal carries no entry.
	if err := os.Remove(e.path("w", "existing", "f.txt")); err != nil {
		t.Fatal(err)
	}
	if ev := ws.next(t, isEvent("existing/f.txt", pb.EventType_EVENT_TYPE_REMOVE)); ev.Entry != nil {
		t.Errorf("remove with entry %v", ev.Entry)
	}
}

func TestWatchDirKeepaliveAndErrors(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("file"), "x")

	ws := e.watch(t, as(&pb.WatchDirRequest{Path: e.dir}, "", "Keepalive-Ping-Interval", "1"))
	select {
	case m := <-ws.msgs:
		if m.GetKeepalive() == nil {
			t.Fatalf("message %v, want keepalive", m)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no keepalive after 1 s interval")
	}

	tests := []struct {
		name string
		req  *pb.WatchDirRequest
		code connect.Code
	}{
		{"missing", &pb.WatchDirRequest{Path: e.path("missing")}, connect.CodeNotFound},
		{"file", &pb.WatchDirRequest{Path: e.path("file")}, connect.CodeInvalidArgument},
		{"bad path", &pb.WatchDirRequest{Path: "~other"}, connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		s, err := e.client.WatchDir(context.Background(), as(tc.req, ""))
		if err == nil {
			for s.Receive() {
				t.Errorf("%s: unexpected message %v", tc.name, s.Msg())
			}
			err = s.Err()
		}
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
		_, err = e.client.CreateWatcher(context.Background(), as(&pb.CreateWatcherRequest{Path: tc.req.GetPath()}, ""))
		if connect.CodeOf(err) != tc.code {
			t.Errorf("CreateWatcher %s: %v, want %v", tc.name, err, tc.code)
		}
	}
}

// TestWatchDirServerClose checks that Server.Close ends open streams.
func TestWatchDirServerClose(t *testing.T) {
	e := newFSEnv(t)
	ws := e.watch(t, as(&pb.WatchDirRequest{Path: e.dir}, ""))
	e.srv.Close()
	select {
	case err := <-ws.done:
		wantCode(t, err, connect.CodeUnavailable)
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open after Close")
	}
	if n := envd.LiveWatchers(e.srv); n != 0 {
		t.Errorf("%d watchers left", n)
	}
}

// frameReader reads Connect streaming envelopes one at a time.
type frameReader struct{ r *bufio.Reader }

// next returns the next frame's flags and JSON payload.
func (fr frameReader) next(t *testing.T) (byte, map[string]any) {
	t.Helper()
	var hdr [5]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		t.Fatalf("reading frame header: %v", err)
	}
	payload := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	if _, err := io.ReadFull(fr.r, payload); err != nil {
		t.Fatalf("reading frame: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatalf("frame is not JSON: %q", payload)
	}
	return hdr[0], m
}

// rawWatch opens WatchDir as the JS SDK does and checks the start frame.
func (e *fsEnv) rawWatch(t *testing.T, ctx context.Context, body string, hdr map[string]string) (*http.Response, frameReader) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/filesystem.Filesystem/WatchDir",
		io.MultiReader(bytes.NewReader(envelope(0, []byte(body))))) // no length: chunked
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	req.Header.Set("Keepalive-Ping-Interval", "50")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp, frameReader{bufio.NewReader(resp.Body)}
}

func TestWatchDirRawConnectJSON(t *testing.T) {
	e := newFSEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, fr := e.rawWatch(t, ctx, `{"path":"`+e.dir+`","recursive":true,"includeEntry":true}`,
		map[string]string{"Connect-Timeout-Ms": "60000", "Authorization": basicAuth("root")})
	defer resp.Body.Close()
	if flags, m := fr.next(t); flags != 0 || fmt.Sprint(m) != "map[start:map[]]" {
		t.Fatalf("first frame %d %v", flags, m)
	}
	writeFile(t, e.path("hello.txt"), "hi")
	flags, m := fr.next(t)
	fsev, _ := m["filesystem"].(map[string]any)
	entry, _ := fsev["entry"].(map[string]any)
	if flags != 0 || fsev["name"] != "hello.txt" || fsev["type"] != "EVENT_TYPE_CREATE" || entry["type"] != "FILE_TYPE_FILE" || entry["path"] != e.path("hello.txt") {
		t.Fatalf("event frame %d %v", flags, m)
	}

	// Aborting the request releases the watcher.
	if n := envd.LiveWatchers(e.srv); n != 1 {
		t.Errorf("%d live watchers, want 1", n)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "watcher release", func() bool { return envd.LiveWatchers(e.srv) == 0 })

	// The deadline ends the stream with deadline_exceeded in the end-stream
	// frame; early errors are end-stream frames too.
	tests := []struct {
		name, body, timeout, code string
	}{
		{"deadline", `{"path":"` + e.dir + `"}`, "300", "deadline_exceeded"},
		{"not found", `{"path":"` + e.path("missing") + `"}`, "60000", "not_found"},
	}
	for _, tc := range tests {
		resp, fr := e.rawWatch(t, context.Background(), tc.body, map[string]string{"Connect-Timeout-Ms": tc.timeout})
		var end map[string]any
		for {
			flags, m := fr.next(t)
			if flags&2 != 0 {
				end = m
				break
			}
		}
		resp.Body.Close()
		if errObj, _ := end["error"].(map[string]any); errObj["code"] != tc.code {
			t.Errorf("%s: end-stream %v, want %s", tc.name, end, tc.code)
		}
	}
	waitFor(t, "watcher release", func() bool { return envd.LiveWatchers(e.srv) == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatcherPolling(t *testing.T) {
	e := newFSEnv(t)
	ctx := context.Background()
	res, err := e.client.CreateWatcher(ctx, as(&pb.CreateWatcherRequest{Path: e.dir, Recursive: true}, "root"))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetWatcherId()
	if !regexp.MustCompile(`^w[a-z0-9]{20}$`).MatchString(id) {
		t.Errorf("watcher id %q", id)
	}

	// poll collects events until one matches last.
	var got []string
	poll := func(last string) {
		t.Helper()
		waitFor(t, last, func() bool {
			r, err := e.client.GetWatcherEvents(ctx, as(&pb.GetWatcherEventsRequest{WatcherId: id}, ""))
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range r.Msg.GetEvents() {
				got = append(got, ev.GetType().String()+" "+ev.GetName())
			}
			return len(got) > 0 && got[len(got)-1] == last
		})
	}
	if err := os.Mkdir(e.path("sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	poll("EVENT_TYPE_CREATE sub")
	writeFile(t, e.path("sub", "a.txt"), "x")
	if err := os.Remove(e.path("sub", "a.txt")); err != nil {
		t.Fatal(err)
	}
	poll("EVENT_TYPE_REMOVE sub/a.txt")
	if want := "EVENT_TYPE_CREATE sub,EVENT_TYPE_CREATE sub/a.txt,EVENT_TYPE_WRITE sub/a.txt,EVENT_TYPE_REMOVE sub/a.txt"; strings.Join(got, ",") != want {
		t.Errorf("events %v", got)
	}
	// The buffer was cleared by the last poll.
	if r, err := e.client.GetWatcherEvents(ctx, as(&pb.GetWatcherEventsRequest{WatcherId: id}, "")); err != nil || len(r.Msg.GetEvents()) != 0 {
		t.Errorf("second poll: %v %v", r, err)
	}

	if _, err := e.client.RemoveWatcher(ctx, as(&pb.RemoveWatcherRequest{WatcherId: id}, "")); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.GetWatcherEvents(ctx, as(&pb.GetWatcherEventsRequest{WatcherId: id}, ""))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.client.RemoveWatcher(ctx, as(&pb.RemoveWatcherRequest{WatcherId: id}, ""))
	wantCode(t, err, connect.CodeNotFound)
	if n := envd.LiveWatchers(e.srv); n != 0 {
		t.Errorf("%d watchers left", n)
	}
}
