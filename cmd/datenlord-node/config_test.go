package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// parseServeFlags parses args and env the way serve does, without running.
func parseServeFlags(t *testing.T, args []string, env map[string]string) (*serveConfig, error) {
	t.Helper()
	cfg := &serveConfig{}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	addServeFlags(fs, cfg)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := applyEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		return nil, err
	}
	cfg.CacheDiskSet = fs.Changed("cache-disk")
	return cfg, cfg.validate()
}

func TestServeDefaults(t *testing.T) {
	cfg, err := parseServeFlags(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := serveConfig{
		DataDir: "/var/lib/datenlord", Mount: "/mnt/datenlord", StoreURL: "file:///var/lib/datenlord/store",
		CacheMem: 512 << 20, BlockSize: 512 << 10, PageSize: 64 << 10, DirtyLimit: 256 << 20,
		LogLevel: slog.LevelInfo, AttrTimeout: time.Second, EntryTimeout: time.Second, ShutdownTimeout: time.Minute, GCInterval: 30 * time.Second,
		CacheDisk: 10 << 30, IOEngine: "auto", CachePolicy: "auto",
		Cluster: clusterConfig{Listen: defaultListen}, Transport: "auto",
	}
	if *cfg != want {
		t.Errorf("defaults:\n got %+v\nwant %+v", *cfg, want)
	}
}

func TestServeFlagEnvPrecedence(t *testing.T) {
	env := map[string]string{
		"DATENLORD_CACHE_MEM":    "1GiB",
		"DATENLORD_DATA_DIR":     "/env/data",
		"DATENLORD_MOUNT":        "/env/mnt",
		"DATENLORD_LOG_LEVEL":    "debug",
		"DATENLORD_FUSE_DEBUG":   "true",
		"DATENLORD_ATTR_TIMEOUT": "5s",
	}
	cfg, err := parseServeFlags(t, []string{"--cache-mem", "64MiB", "--mount", "/flag/mnt"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CacheMem != 64<<20 {
		t.Errorf("flag must win over env: cache-mem = %d", cfg.CacheMem)
	}
	if cfg.Mount != "/flag/mnt" {
		t.Errorf("flag must win over env: mount = %s", cfg.Mount)
	}
	if cfg.DataDir != "/env/data" || cfg.StoreURL != "file:///env/data/store" {
		t.Errorf("env must win over default: data dir %s, store %s", cfg.DataDir, cfg.StoreURL)
	}
	if cfg.LogLevel != slog.LevelDebug || !cfg.FuseDebug || cfg.AttrTimeout != 5*time.Second {
		t.Errorf("env not applied: %+v", cfg)
	}
}

func TestServeConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"bad cache-mem", []string{"--cache-mem", "lots"}, nil, `invalid size "lots"`},
		{"page not dividing block", []string{"--page-size", "48KiB"}, nil, "--page-size 48KiB does not divide --block-size 512KiB"},
		{"page not 4KiB multiple", []string{"--page-size", "1000", "--block-size", "1000"}, nil, "multiple of 4KiB"},
		{"block too big", []string{"--block-size", "1GiB"}, nil, "--block-size 1GiB"},
		{"cache smaller than a page", []string{"--cache-mem", "4KiB"}, nil, "--cache-mem 4KiB"},
		{"dirty limit smaller than a block", []string{"--dirty-limit", "64KiB"}, nil, "--dirty-limit 64KiB"},
		{"bad log level", []string{"--log-level", "loud"}, nil, `invalid log level "loud"`},
		{"bad metrics addr", []string{"--metrics", "9100"}, nil, "--metrics"},
		{"relative store", []string{"--store", "file://relative/x"}, nil, "absolute path"},
		{"data dir inside mount", []string{"--mount", "/mnt/x", "--data-dir", "/mnt/x/data"}, nil, "inside the mount point"},
		{"store inside mount", []string{"--mount", "/mnt/x", "--store", "file:///mnt/x/s"}, nil, "inside the mount point"},
		{"negative timeout", []string{"--attr-timeout", "-1s"}, nil, "--attr-timeout"},
		{"bad env size", nil, map[string]string{"DATENLORD_CACHE_MEM": "lots"}, "DATENLORD_CACHE_MEM"},
		{"bad env bool", nil, map[string]string{"DATENLORD_FUSE_DEBUG": "maybe"}, "DATENLORD_FUSE_DEBUG"},
		{"bad env duration", nil, map[string]string{"DATENLORD_ENTRY_TIMEOUT": "soon"}, "DATENLORD_ENTRY_TIMEOUT"},
		{"bad io engine", []string{"--io-engine", "aio"}, nil, `--io-engine "aio": want auto, uring, uring-sqpoll or psync`},
		{"bad env io engine", nil, map[string]string{"DATENLORD_IO_ENGINE": "spdk"}, "--io-engine"},
		{"bad cache policy", []string{"--cache-policy", "fifo"}, nil, "--cache-policy: unknown cache policy \"fifo\": valid policies are auto, lru, mru, s3fifo, 2q"},
		{"cache-disk without cache-dir", []string{"--cache-disk", "1GiB"}, nil, "--cache-disk 1GiB needs --cache-dir"},
		{"env cache-disk without cache-dir", nil, map[string]string{"DATENLORD_CACHE_DISK": "1GiB"}, "needs --cache-dir"},
		{"cache-disk too small", []string{"--cache-dir", "/c", "--cache-disk", "64KiB"}, nil, "--cache-disk 64KiB: must hold at least one page"},
		{"bad cache-disk", []string{"--cache-dir", "/c", "--cache-disk", "big"}, nil, `invalid size "big"`},
		{"cache dir inside mount", []string{"--mount", "/mnt/x", "--cache-dir", "/mnt/x/cache"}, nil, "--cache-dir /mnt/x/cache is inside the mount point"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServeFlags(t, tc.args, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v; want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestServeCacheFlags checks the cache tier flags: defaults with
// --cache-dir, the environment, and case-insensitive names.
func TestServeCacheFlags(t *testing.T) {
	cfg, err := parseServeFlags(t, []string{"--cache-dir", "rel/cache"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(cfg.CacheDir, "/rel/cache") || cfg.CacheDir[0] != '/' || cfg.CacheDisk != 10<<30 || cfg.IOEngine != "auto" || cfg.CachePolicy != "auto" {
		t.Errorf("--cache-dir alone: dir %q (want absolute), disk %d (want 10GiB), engine %q, policy %q", cfg.CacheDir, cfg.CacheDisk, cfg.IOEngine, cfg.CachePolicy)
	}
	env := map[string]string{
		"DATENLORD_CACHE_DIR":    "/env/cache",
		"DATENLORD_CACHE_DISK":   "2GiB",
		"DATENLORD_IO_ENGINE":    "PSYNC",
		"DATENLORD_CACHE_POLICY": "S3FIFO",
	}
	cfg, err = parseServeFlags(t, []string{"--cache-policy", "2q"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CacheDir != "/env/cache" || cfg.CacheDisk != 2<<30 || cfg.IOEngine != "psync" || cfg.CachePolicy != "2q" {
		t.Errorf("env: dir %q, disk %d, engine %q, policy %q; want /env/cache, 2GiB, psync, 2q (flag wins)", cfg.CacheDir, cfg.CacheDisk, cfg.IOEngine, cfg.CachePolicy)
	}
	for _, engine := range []string{"auto", "uring", "Uring-SQPoll", "psync"} {
		cfg, err = parseServeFlags(t, []string{"--cache-dir", "/c", "--io-engine", engine}, nil)
		if err != nil || cfg.IOEngine != strings.ToLower(engine) {
			t.Errorf("--io-engine %s: engine %q, err %v", engine, cfg.IOEngine, err)
		}
	}
}

func TestEnvName(t *testing.T) {
	if got := envName("cache-mem"); got != "DATENLORD_CACHE_MEM" {
		t.Errorf("envName(cache-mem) = %s", got)
	}
}

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		path, dir string
		want      bool
	}{
		{"/a/b", "/a", true}, {"/a", "/a", true}, {"/ab", "/a", false}, {"/", "/a", false}, {"/a/..b", "/a", true},
	} {
		if got := within(tc.path, tc.dir); got != tc.want {
			t.Errorf("within(%s, %s) = %v", tc.path, tc.dir, got)
		}
	}
}
