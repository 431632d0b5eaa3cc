// Package pingpong is the raw TCP baseline of the transport benchmarks: a
// server that answers each 16-byte request with as many bytes as the
// request's first 4 bytes (little endian) ask for, the shape of a page read
// without framing, authentication or checksums.
package pingpong

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
)

// RequestSize is the size of a request.
const RequestSize = 16

// Serve starts a server on 127.0.0.1 answering requests of up to maxSize
// bytes (larger ones are answered with maxSize) and returns its address and
// a stop function that closes the listener and every connection and waits
// for the server's goroutines.
func Serve(maxSize int) (addr string, stop func(), err error) {
	return ServeOn("127.0.0.1", maxSize)
}

// ServeOn is Serve on host (an IP or name of this machine; "" for every
// address) at a port the kernel picks.
func ServeOn(host string, maxSize int) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", nil, fmt.Errorf("pingpong: listen on %q: %w", host, err)
	}
	page := make([]byte, maxSize)
	for i := range page {
		page[i] = byte(i*7 + i>>8)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				var req [RequestSize]byte
				for {
					if _, err := io.ReadFull(c, req[:]); err != nil {
						return
					}
					n := min(int(binary.LittleEndian.Uint32(req[:])), maxSize)
					if _, err := c.Write(page[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	stop = func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	return ln.Addr().String(), stop, nil
}
