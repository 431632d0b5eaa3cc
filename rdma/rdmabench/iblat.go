package rdmabench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/datenlord/datenlord-go/bench/tiers"
)

// Bounds of one ib_read_lat run.
const (
	minIBIters = 100
	maxIBIters = 5000
	// ibRunTimeout bounds a whole ib_read_lat run (server and client):
	// seconds on hardware, a few on a TCG guest.
	ibRunTimeout = 60 * time.Second
	// ibConnectWindow is how long the client retries while the server
	// starts listening.
	ibConnectWindow = 10 * time.Second
)

// Baseline runs perftest's ib_read_lat with a server and a client on the
// same device in this host (`-s SIZE -n N -F -H`, the GID of 127.0.0.1)
// and returns its report: t_typical (perftest's median) as p50, its
// t_min, t_max, t_avg, 99% and 99.9% percentiles, and p1 and p90 from the
// samples -H prints. N is b.Iterations within [100, 5000]. A missing
// ib_read_lat or a failed run is a skipped row with the reason.
func (h *Hook) Baseline(ctx context.Context, size int, b tiers.Bounds) (tiers.Measurement, error) {
	bin := h.cfg.IBReadLat
	if bin == "" {
		p, err := exec.LookPath("ib_read_lat")
		if err != nil {
			return tiers.Measurement{}, tiers.Skip("ib_read_lat not installed (apt-get install perftest)")
		}
		bin = p
	}
	dev, err := h.openDevice(loopback())
	if err != nil {
		return tiers.Measurement{}, fmt.Errorf("ib_read_lat: open device: %w", err)
	}
	name, gidx := dev.Name(), dev.GIDIndex()
	_ = dev.Close()
	iters := min(max(b.Iterations, minIBIters), maxIBIters)
	port, err := freePort()
	if err != nil {
		return tiers.Measurement{}, fmt.Errorf("ib_read_lat: %w", err)
	}
	args := []string{"-d", name, "-i", "1", "-x", strconv.Itoa(gidx), "-s", strconv.Itoa(size), "-n", strconv.Itoa(iters),
		"-F", "-H", "-p", strconv.Itoa(port)}
	out, err := runIBReadLat(ctx, bin, args, "127.0.0.1")
	cmdline := "ib_read_lat " + strings.Join(args, " ") + " 127.0.0.1"
	if err != nil {
		if ctx.Err() != nil {
			return tiers.Measurement{}, fmt.Errorf("ib_read_lat: %w", ctx.Err())
		}
		h.log.Warn("ib_read_lat failed; row skipped", "cmd", cmdline, "err", err)
		return tiers.Measurement{}, tiers.Skip(fmt.Sprintf("ib_read_lat failed: %v", err))
	}
	m, err := ParseIBReadLat(out, size)
	if err != nil {
		h.log.Warn("ib_read_lat output not understood; row skipped", "cmd", cmdline, "err", err, "output", string(out))
		return tiers.Measurement{}, tiers.Skip(fmt.Sprintf("ib_read_lat output: %v", err))
	}
	m.Command = cmdline
	m.Note = fmt.Sprintf("perftest ib_read_lat, server and client on %s in this host: p50 = t_typical (median), "+
		"min/max/mean/p99/p99.9 its report, p1/p90 from its -H samples; READs of %d bytes (the tier READs %d: slot header + page)",
		name, size, size+cacheSlotHeader)
	return m, nil
}

// runIBReadLat starts the server, then the client (retried while the
// server is not listening yet), and returns the client's output.
func runIBReadLat(ctx context.Context, bin string, args []string, host string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ibRunTimeout)
	defer cancel()
	var srvOut bytes.Buffer
	srv := exec.CommandContext(ctx, bin, args...)
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	srv.WaitDelay = time.Second
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	stopServer := func() {
		_ = srv.Process.Kill()
		<-srvDone
	}
	deadline := time.Now().Add(ibConnectWindow)
	for {
		select {
		case <-time.After(200 * time.Millisecond): // the server binds its port
		case err := <-srvDone:
			return nil, fmt.Errorf("server exited before the client connected: %v: %s", err, tail(srvOut.Bytes()))
		}
		cli := exec.CommandContext(ctx, bin, append(slices.Clone(args), host)...)
		var cliOut bytes.Buffer
		cli.Stdout, cli.Stderr = &cliOut, &cliOut
		cli.WaitDelay = time.Second
		err := cli.Run()
		if err == nil {
			select {
			case <-srvDone:
			case <-time.After(5 * time.Second):
				stopServer()
			}
			return cliOut.Bytes(), nil
		}
		refused := bytes.Contains(cliOut.Bytes(), []byte("Couldn't connect"))
		if !refused || time.Now().After(deadline) || ctx.Err() != nil {
			stopServer()
			return nil, fmt.Errorf("client: %w: %s (server: %s)", err, tail(cliOut.Bytes()), tail(srvOut.Bytes()))
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// for perftest's out-of-band exchange.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last lines of a tool's output, for an error.
func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-4):], " | ")
}

// ParseIBReadLat reads ib_read_lat's report for size: the summary line
// under the "#bytes #iterations t_min t_max t_typical t_avg t_stdev 99%
// 99.9%" header, and, when -H was given, the "i, usec" sample lines
// (their p1 and p90; Samples counts them, else it is #iterations).
func ParseIBReadLat(out []byte, size int) (tiers.Measurement, error) {
	var m tiers.Measurement
	var samples []float64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i, v, ok := strings.Cut(line, ","); ok {
			if _, err := strconv.Atoi(strings.TrimSpace(i)); err == nil {
				if x, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					samples = append(samples, x)
				}
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != strconv.Itoa(size) {
			continue
		}
		var v [9]float64
		ok := true
		for j := range v {
			x, err := strconv.ParseFloat(f[j], 64)
			if err != nil {
				ok = false
				break
			}
			v[j] = x
		}
		if !ok {
			continue
		}
		m = tiers.Measurement{Samples: int(v[1]), MinUS: v[2], MaxUS: v[3], P50US: v[4], MeanUS: v[5], P99US: v[7], P999US: v[8]}
		found = true
	}
	if err := sc.Err(); err != nil {
		return tiers.Measurement{}, fmt.Errorf("read ib_read_lat output: %w", err)
	}
	if !found {
		return tiers.Measurement{}, errors.New("no result line for size " + strconv.Itoa(size))
	}
	if m.P50US <= 0 {
		return tiers.Measurement{}, fmt.Errorf("t_typical %v", m.P50US)
	}
	if len(samples) > 0 {
		slices.Sort(samples)
		m.Samples = len(samples)
		m.P1US = nearestRank(samples, 0.01)
		m.P90US = nearestRank(samples, 0.90)
	}
	return m, nil
}

// nearestRank returns the q-quantile of sorted samples (nearest rank, as
// bench/tiers computes its rows').
func nearestRank(sorted []float64, q float64) float64 {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
