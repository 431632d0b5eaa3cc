package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := execute(args, streams{Stdout: &stdout, Stderr: &stderr, LookupEnv: func(string) (string, bool) { return "", false }}); code != 0 {
		t.Fatalf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String()
}

// TestBenchTiersLocal runs bench tiers --local with tiny bounds: the JSON
// holds every tier and baseline (measured or skipped with a reason) and
// the plot is an SVG.
func TestBenchTiersLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts in-process nodes, a disk tier and versitygw when installed")
	}
	dir := t.TempDir()
	js, svg := filepath.Join(dir, "tiers.json"), filepath.Join(dir, "tiers.svg")
	out, _ := runCmd(t, "bench", "tiers", "--local", "--sizes", "4KiB", "--duration", "10ms", "--iterations", "40",
		"--parallel", "2", "--working-set", "512KiB", "--dir", dir, "--json", js, "--plot", svg)
	if !strings.Contains(out, "RATIO p50") || !strings.Contains(out, "neighbor/tcp") {
		t.Errorf("no table:\n%s", out)
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Machine struct {
			NumCPU int `json:"nproc"`
		} `json:"machine"`
		Rows []struct {
			Tier, Kind, Skipped string
			Samples             int
			P50                 float64 `json:"p50_us"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, b)
	}
	seen := map[string]bool{}
	for _, r := range rep.Rows {
		seen[r.Tier] = true
		if r.Skipped == "" && (r.Samples == 0 || r.P50 <= 0) {
			t.Errorf("row %s measured nothing", r.Tier)
		}
	}
	for _, want := range []string{"memory", "memcpy", "disk/uring", "raw-uring", "fio-uring", "disk/psync", "raw-pread",
		"disk/uring-sqpoll", "raw-uring-sqpoll", "neighbor/tcp", "tcp-pingpong", "neighbor/rdma", "ib_read_lat", "rdma-read", "store/file", "file-pread", "store/s3", "aws-sdk-get"} {
		if !seen[want] {
			t.Errorf("JSON has no %s row", want)
		}
	}
	p, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	head := string(p[:min(len(p), 200)])
	if !strings.HasPrefix(head, "<?xml") && !strings.HasPrefix(head, "<svg") || !strings.Contains(head, "<svg") {
		t.Errorf("plot is not an SVG: %q", head)
	}
}

// TestBenchTiersModeFlags: bench tiers needs exactly one of --local and
// --addr, and --addr a host:port and the cluster secret.
func TestBenchTiersModeFlags(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"neither", nil, "exactly one of --local"},
		{"both", []string{"--local", "--addr", "127.0.0.1:7071"}, "exactly one of --local"},
		{"addr without port", []string{"--addr", "node1"}, "want host:port"},
		{"no secret", []string{"--addr", "127.0.0.1:7071"}, "--cluster-secret-file"},
		{"secret file missing", []string{"--addr", "127.0.0.1:7071", "--cluster-secret-file", "/nonexistent/secret"}, "/nonexistent/secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"bench", "tiers"}, tc.args...)
			code := execute(args, streams{Stdout: &stdout, Stderr: &stderr, LookupEnv: noEnv})
			if code != 1 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestBenchFS(t *testing.T) {
	dir := t.TempDir()
	js := filepath.Join(t.TempDir(), "fs.json")
	out, _ := runCmd(t, "bench", "fs", dir, "--big-file-size", "1MiB", "--block-size", "64KiB", "--random-ops", "20",
		"--small-files", "5", "--small-file-size", "4KiB", "--json", js)
	for _, want := range []string{"ITEM", "Write big file", "Read small file", "Stat file"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var res struct{ Items []struct{ Name string } }
	if err := json.Unmarshal(b, &res); err != nil || len(res.Items) != 8 {
		t.Fatalf("JSON: %v, %d items\n%s", err, len(res.Items), b)
	}
}

func TestBenchCacheJSON(t *testing.T) {
	js := filepath.Join(t.TempDir(), "cache.json")
	out, _ := runCmd(t, "bench", "cache", "--refs", "20000", "--pages", "2000", "--json", js)
	if !strings.Contains(out, "belady") {
		t.Errorf("table lacks belady:\n%s", out)
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Rows []struct {
			Trace, Policy string
			HitRatio      float64 `json:"hit_ratio"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("invalid JSON: %v", err)
	}
	policies := map[string]bool{}
	traces := map[string]bool{}
	for _, r := range res.Rows {
		policies[r.Policy], traces[r.Trace] = true, true
		if r.HitRatio < 0 || r.HitRatio > 1 {
			t.Errorf("hit ratio %v out of range", r.HitRatio)
		}
	}
	for _, p := range []string{"belady", "lru", "s3fifo", "auto"} {
		if !policies[p] {
			t.Errorf("no %s rows", p)
		}
	}
	if len(traces) != 3 {
		t.Errorf("traces %v, want zipf, scan and mixed", traces)
	}
}
