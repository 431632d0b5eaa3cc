package clustertest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { Main(m) }

// TestStandaloneLifecycle runs the harness's process handling on the
// single-node file system: start, write, crash, restart, graceful stop,
// in the host's network namespace and in a namespace of its own.
func TestStandaloneLifecycle(t *testing.T) {
	for _, netns := range []bool{false, true} {
		name := "loopback"
		if netns {
			name = "netns"
		}
		t.Run(name, func(t *testing.T) {
			c := New(t, Options{Standalone: true, Netns: netns})
			n := c.Node(0)
			path := filepath.Join(n.Mountpoint(), "f")
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("durable"); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			n.Kill()
			if n.Running() || IsMounted(n.Mountpoint()) {
				t.Fatalf("after Kill: running %v, mounted %v", n.Running(), IsMounted(n.Mountpoint()))
			}
			n.Start()
			if got, err := os.ReadFile(path); err != nil || string(got) != "durable" {
				t.Fatalf("after a crash and restart: %q, %v", got, err)
			}
			listing, err := ListTree(n.Mountpoint())
			if err != nil || len(listing) != 1 || listing[0].Size != 7 {
				t.Fatalf("ListTree: %v, %v", listing, err)
			}
			n.Stop()
			n.Start()
		})
	}
}

// TestPartitionDropsTraffic checks the nftables partition on the bare
// network (no nodes): TCP between namespaces works, is cut between groups
// by Partition, and works again after Heal.
func TestPartitionDropsTraffic(t *testing.T) {
	RequireFUSE(t) // root
	nw, err := newNetwork(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nw.remove(); err != nil {
			t.Error(err)
		}
	})
	c := &Cluster{t: t, net: nw}
	for i := range nw.nodeNS {
		c.nodes = append(c.nodes, &Node{c: c, id: string(rune('1' + i)), netns: nw.nodeNS[i]})
	}
	var lns []net.Listener
	for i, ns := range nw.nodeNS {
		var ln net.Listener
		if err := inNetns(ns, func() (err error) {
			ln, err = net.Listen("tcp", net.JoinHostPort(nw.addrs[i], "7000"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
		lns = append(lns, ln)
	}
	reach := func(from, to int) bool {
		var ok bool
		if err := inNetns(nw.nodeNS[from], func() error {
			conn, err := net.DialTimeout("tcp", lns[to].Addr().String(), 300*time.Millisecond)
			if err == nil {
				conn.Close()
				ok = true
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	expect := func(state string, want func(i, j int) bool) {
		t.Helper()
		for i := range lns {
			for j := range lns {
				if got := reach(i, j); got != want(i, j) {
					t.Errorf("%s: %d -> %d reachable %v, want %v", state, i+1, j+1, got, want(i, j))
				}
			}
		}
	}
	expect("before", func(i, j int) bool { return true })
	c.Partition(c.nodes[:1], c.nodes[1:])
	expect("partitioned {1} | {2 3}", func(i, j int) bool { return i == j || (i > 0 && j > 0) })
	c.Partition(c.nodes[:2])
	expect("partitioned {1 2} | {3}", func(i, j int) bool { return i == j || (i < 2 && j < 2) })
	c.Heal()
	expect("healed", func(i, j int) bool { return true })
}

// inNetns runs f on a thread that has joined the named network namespace;
// sockets f creates live there.
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so ends with the goroutine): it
		// may not return to the pool in another namespace.
		fd, err := unix.Open(netnsPath(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(errors.New("setns "+name), err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
