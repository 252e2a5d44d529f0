package qemu

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzQMP: whatever a (compromised or broken) QEMU writes on its monitor
// socket, the client neither panics nor hangs: connecting either fails or
// yields a client whose commands answer (with a result or an error) and
// whose event subscriptions end when the connection does.
func FuzzQMP(f *testing.F) {
	const greeting = `{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":8}},"capabilities":["oob"]}}` + "\r\n"
	for _, s := range []string{
		greeting + `{"return":{},"id":"c1"}` + "\r\n" + `{"return":{"status":"running","running":true},"id":"c2"}` + "\r\n",
		greeting + `{"timestamp":{"seconds":1,"microseconds":2},"event":"STOP"}{"return":{},"id":"c1"}{"error":{"class":"GenericError","desc":"x"},"id":"c2"}`,
		greeting + `{"return":{},"id":"c1"}{"return":"not an object","id":"c2"}`,
		greeting + `{"return":{},"id":"c1"}{"event":"SHUTDOWN","data":{"guest":true,"reason":"guest-shutdown"},"timestamp":{"seconds":-9223372036854775808,"microseconds":9223372036854775807}}`,
		greeting + `{"error":{"class":"CommandNotFound","desc":"no"},"id":"c1"}`,
		greeting + `{"return":{},"id":"c9"}`,
		greeting + `{"return":{},"id":"c1"`,
		`{"QMP":null}`, `[]`, `{"QMP":{}} garbage`, ``,
	} {
		f.Add(s)
	}
	dir, err := os.MkdirTemp("", "qmpfuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, data string) {
		served := make(chan struct{})
		go func() {
			defer close(served)
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = conn.Write([]byte(data))
			_ = conn.CloseWrite()
			_, _ = io.Copy(io.Discard, conn) // the client's commands, until it closes
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := dialQMP(ctx, sock, log, nil)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("connecting hung on %q", data)
			}
			<-served
			return
		}
		ev, stop := c.subscribe()
		defer stop()
		var st struct {
			Status  string `json:"status"`
			Running bool   `json:"running"`
		}
		_ = c.Execute(ctx, "query-status", nil, &st)
		if ctx.Err() != nil {
			t.Fatalf("a command hung on %q", data)
		}
		_ = c.Close()
		for range ev { // closed with the connection
		}
		<-served
	})
}
