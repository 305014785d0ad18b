// httpserver: a small Go HTTP server for `cargo xtask bench`, the load on which the daemon's
// Go statistics must cost almost nothing.
//
// Usage: httpserver ADDR. Prints "listening ADDR" once it accepts connections. Each request
// does a little work across goroutines (a channel handoff and a SHA-256 of 4 KiB), so the
// runtime schedules goroutines the way a service does.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
)

var payload = make([]byte, 4096)

func handler(w http.ResponseWriter, r *http.Request) {
	done := make(chan [32]byte)
	go func() { done <- sha256.Sum256(payload) }()
	sum := <-done
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, hex.EncodeToString(sum[:]))
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: httpserver ADDR")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	http.HandleFunc("/", handler)
	if err := http.Serve(ln, nil); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
