// Command guestsrv is the proxy tests' server inside a guest: it listens
// on 127.0.0.1 only (so envd's loopback forwarder is on the path too) and
// serves / (a greeting and the request's headers of interest), /echo (the
// body back), /stream (three chunks a moment apart) and /ws (a WebSocket
// echo).
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"
)

func main() {
	addr := "127.0.0.1:8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the guest; host=%s api-key=%q traffic-token=%q\n",
			r.Host, r.Header.Get("X-Api-Key"), r.Header.Get("E2b-Traffic-Access-Token"))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		// Echoing while the body still arrives needs full duplex: without
		// it, Go's HTTP/1 server ends the body's reads once the answer's
		// first bytes are flushed (and the echo came back truncated when
		// the proxy delivered the body slower than the guest answered).
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		for i := range 3 {
			fmt.Fprintf(w, "chunk %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond)
		}
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, append([]byte("echo: "), data...)); err != nil {
				return
			}
		}
	})
	if err := http.ListenAndServe(addr, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
