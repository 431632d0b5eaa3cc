package tiers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/datenlord/datenlord-go/store"
)

// storeBlocks is how many blocks the persistence rows write (and read
// pages of at random): few, since S3 puts are slow, but more than one.
const storeBlocks = 8

// fileStoreSetup writes blocks of 8 pages to a local directory store; the
// tier row reads random pages through LocalStore.ReadAt, the baseline
// preads the same ranges of the same block files with os.File.ReadAt.
// Both read through the OS page cache (the blocks were just written).
func (r *runner) fileStoreSetup(ctx context.Context, size int) (setupResult, error) {
	dir, err := os.MkdirTemp(r.dir, "store-")
	if err != nil {
		return setupResult{}, fmt.Errorf("store dir: %w", err)
	}
	st, err := store.Open(ctx, "file://"+dir, store.Options{Logger: r.log})
	if err != nil {
		_ = os.RemoveAll(dir)
		return setupResult{}, fmt.Errorf("local store: %w", err)
	}
	var files []*os.File
	cleanup := func() {
		for _, f := range files {
			_ = f.Close()
		}
		_ = st.Close()
		_ = os.RemoveAll(dir)
	}
	block := make([]byte, pagesPerBlock*size)
	for id := uint64(1); id <= storeBlocks; id++ {
		fillPattern(block, id)
		if err := st.Put(ctx, id, block); err != nil {
			cleanup()
			return setupResult{}, fmt.Errorf("local store put: %w", err)
		}
		// The store's layout: <root>/blocks/<last two hex digits>/<16 hex digits>.
		p := filepath.Join(dir, "blocks", fmt.Sprintf("%02x", id&0xff), fmt.Sprintf("%016x", id))
		f, err := os.Open(p)
		if err != nil {
			cleanup()
			return setupResult{}, fmt.Errorf("raw open of block file: %w", err)
		}
		files = append(files, f)
	}
	where := func(i int) (uint64, int64) {
		p := pick(i, storeBlocks*pagesPerBlock)
		return uint64(p/pagesPerBlock + 1), int64(p%pagesPerBlock) * int64(size)
	}
	wls := map[string]Workload{
		TierStoreFile: storeWorkload(st, size, where),
		BaseFilePread: func(_ context.Context, _ int) (Op, func(), error) {
			dst := make([]byte, size)
			return func(_ context.Context, i int) error {
				id, off := where(i)
				got, err := files[id-1].ReadAt(dst, off)
				if err != nil || got != size {
					return fmt.Errorf("pread block %d at %d: %d bytes: %w", id, off, got, err)
				}
				return nil
			}, func() {}, nil
		},
	}
	return setupResult{workloads: wls, cleanup: cleanup}, nil
}

// storeWorkload reads the page where(i) says through st.ReadAt.
func storeWorkload(st store.Store, size int, where func(int) (uint64, int64)) Workload {
	return func(_ context.Context, _ int) (Op, func(), error) {
		dst := make([]byte, size)
		return func(ctx context.Context, i int) error {
			id, off := where(i)
			got, err := st.ReadAt(ctx, id, off, dst)
			if err != nil {
				return fmt.Errorf("store read block %d at %d: %w", id, off, err)
			}
			if got != size {
				return fmt.Errorf("store read block %d at %d: %d bytes, want %d", id, off, got, size)
			}
			return nil
		}, func() {}, nil
	}
}

// s3Target is the S3 store the store/s3 rows use: a URL (with a prefix
// unique to this run), static credentials (empty: the environment's), and
// the pieces the raw client needs.
type s3Target struct {
	url       string
	bucket    string
	prefix    string
	endpoint  string
	region    string
	accessKey string
	secretKey string
}

// openS3 picks the S3 target: Config.S3URL, else a versitygw started for
// the run (see StartVersitygw), else a skip reason. stop ends what it
// started.
func (r *runner) openS3(ctx context.Context) (*s3Target, string, func()) {
	if r.cfg.NoS3 {
		return nil, "--no-s3", func() {}
	}
	if len(r.cfg.Only) > 0 && !containsAny(r.cfg.Only, []string{TierStoreS3, BaseS3Get}) {
		return nil, "not selected", func() {}
	}
	run := make([]byte, 6)
	_, _ = rand.Read(run)
	if r.cfg.S3URL != "" {
		t, err := parseS3URL(r.cfg.S3URL)
		if err != nil {
			return nil, err.Error(), func() {}
		}
		t.prefix = strings.Trim(t.prefix+"/datenlord-bench-"+hex.EncodeToString(run), "/")
		t.url = t.storeURL()
		return t, "", func() {}
	}
	bin, err := FindVersitygw()
	if err != nil {
		return nil, err.Error(), func() {}
	}
	gw, err := StartVersitygw(ctx, bin, filepath.Join(r.dir, "versitygw"))
	if err != nil {
		r.log.Warn("versitygw did not start; S3 rows skipped", "err", err)
		return nil, "versitygw did not start: " + err.Error(), func() {}
	}
	t := &s3Target{bucket: gw.Bucket, prefix: "bench", endpoint: gw.Endpoint, region: gw.Region, accessKey: gw.AccessKey, secretKey: gw.SecretKey}
	t.url = t.storeURL()
	return t, "", gw.Stop
}

func (t *s3Target) storeURL() string {
	q := url.Values{}
	if t.endpoint != "" {
		q.Set("endpoint", t.endpoint)
	}
	if t.region != "" {
		q.Set("region", t.region)
	}
	u := url.URL{Scheme: "s3", Host: t.bucket, Path: "/" + t.prefix, RawQuery: q.Encode()}
	return u.String()
}

// parseS3URL reads bucket, prefix, endpoint and region of an s3:// URL.
func parseS3URL(raw string) (*s3Target, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return nil, fmt.Errorf("--s3-url %q: want s3://BUCKET/PREFIX?endpoint=...", raw)
	}
	q := u.Query()
	return &s3Target{bucket: u.Host, prefix: strings.Trim(u.Path, "/"), endpoint: q.Get("endpoint"), region: q.Get("region")}, nil
}

// s3Setup writes blocks of 8 pages to the S3 target; the tier row reads
// random pages through S3Store.ReadAt (one ranged GET each), the baseline
// GETs the same ranges of the same objects with a plain aws-sdk client.
func (r *runner) s3Setup(t *s3Target) func(ctx context.Context, size int) (setupResult, error) {
	return func(ctx context.Context, size int) (setupResult, error) {
		if t == nil {
			return setupResult{}, skipped("no S3 target")
		}
		prefix := fmt.Sprintf("%s/%s", t.prefix, sizeName(size))
		tt := *t
		tt.prefix = prefix
		opts := store.Options{Logger: r.log, S3: store.S3Options{AccessKeyID: t.accessKey, SecretAccessKey: t.secretKey}}
		st, err := store.Open(ctx, tt.storeURL(), opts)
		if err != nil {
			return setupResult{}, fmt.Errorf("s3 store %s: %w", tt.storeURL(), err)
		}
		cleanup := func() {
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for id := uint64(1); id <= storeBlocks; id++ {
				_ = st.Delete(dctx, id)
			}
			_ = st.Close()
		}
		block := make([]byte, pagesPerBlock*size)
		for id := uint64(1); id <= storeBlocks; id++ {
			fillPattern(block, id)
			if err := st.Put(ctx, id, block); err != nil {
				cleanup()
				return setupResult{}, fmt.Errorf("s3 put: %w", err)
			}
		}
		client, err := rawS3Client(ctx, t)
		if err != nil {
			cleanup()
			return setupResult{}, err
		}
		where := func(i int) (uint64, int64) {
			p := pick(i, storeBlocks*pagesPerBlock)
			return uint64(p/pagesPerBlock + 1), int64(p%pagesPerBlock) * int64(size)
		}
		wls := map[string]Workload{
			TierStoreS3: storeWorkload(st, size, where),
			BaseS3Get: func(_ context.Context, _ int) (Op, func(), error) {
				dst := make([]byte, size)
				return func(ctx context.Context, i int) error {
					id, off := where(i)
					key := fmt.Sprintf("%s/blocks/%016x", prefix, id)
					out, err := client.GetObject(ctx, &s3.GetObjectInput{
						Bucket: aws.String(t.bucket), Key: aws.String(key),
						Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(size)-1)),
					})
					if err != nil {
						return fmt.Errorf("raw GET %s: %w", key, err)
					}
					got, err := io.ReadFull(out.Body, dst)
					_ = out.Body.Close()
					if err != nil {
						return fmt.Errorf("raw GET %s: read %d bytes: %w", key, got, err)
					}
					return nil
				}, func() {}, nil
			},
		}
		return setupResult{workloads: wls, cleanup: cleanup}, nil
	}
}

// rawS3Client is a plain aws-sdk client for t: path-style, static
// credentials when t has them (else the SDK's default chain), no
// checksums beyond what S3 requires.
func rawS3Client(ctx context.Context, t *s3Target) (*s3.Client, error) {
	load := []func(*config.LoadOptions) error{}
	if t.region != "" {
		load = append(load, config.WithRegion(t.region))
	} else if os.Getenv("AWS_REGION") == "" {
		load = append(load, config.WithRegion(store.DefaultS3Region))
	}
	if t.accessKey != "" {
		load = append(load, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(t.accessKey, t.secretKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return nil, fmt.Errorf("raw s3 client: %w", err)
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = true
		if t.endpoint != "" {
			o.BaseEndpoint = aws.String(t.endpoint)
		}
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

// Versitygw is a versitygw process serving a directory through its POSIX
// backend on 127.0.0.1, with one bucket (the same set-up as store/s3test,
// outside of a test).
type Versitygw struct {
	Endpoint  string
	Bucket    string
	AccessKey string
	SecretKey string
	Region    string

	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// FindVersitygw looks for the versitygw binary as store/s3test does:
// $DATENLORD_VERSITYGW, PATH, then $(go env GOBIN) or $(go env
// GOPATH)/bin (default ~/go/bin). Unlike s3test it never installs it.
func FindVersitygw() (string, error) {
	if p := os.Getenv("DATENLORD_VERSITYGW"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("GOPATH"); d != "" {
		dirs = append(dirs, filepath.Join(d, "bin"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(h, "go", "bin"))
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) >= 1 && strings.TrimSpace(lines[0]) != "" {
			dirs = append(dirs, strings.TrimSpace(lines[0]))
		}
		if len(lines) >= 2 && strings.TrimSpace(lines[1]) != "" {
			dirs = append(dirs, filepath.Join(strings.TrimSpace(lines[1]), "bin"))
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("versitygw not found (install it with ci/install-versitygw.sh, or pass --s3-url)")
}

// StartVersitygw runs bin on a free port of 127.0.0.1 serving dir, waits
// until it answers and creates a bucket. Stop kills it.
func StartVersitygw(ctx context.Context, bin, dir string) (*Versitygw, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("versitygw dir: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("versitygw port: %w", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	g := &Versitygw{
		Endpoint: "http://" + addr, Bucket: "datenlord-bench",
		AccessKey: "datenlordbenchaccess", SecretKey: "datenlordbenchsecret0123456789", Region: "us-east-1",
		done: make(chan struct{}),
	}
	g.cmd = exec.Command(bin, "--access", g.AccessKey, "--secret", g.SecretKey, "--region", g.Region,
		"--port", addr, "--keep-alive", "--quiet", "posix", dir)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ROOT_") && !strings.HasPrefix(kv, "VGW_") {
			env = append(env, kv)
		}
	}
	g.cmd.Env = env
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	go func() { _ = g.cmd.Wait(); close(g.done) }()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-g.done:
			return nil, fmt.Errorf("versitygw exited at start-up: %v", g.cmd.ProcessState)
		default:
		}
		resp, err := hc.Get(g.Endpoint + "/")
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			g.Stop()
			return nil, fmt.Errorf("versitygw not answering on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	client, err := rawS3Client(ctx, &s3Target{endpoint: g.Endpoint, region: g.Region, accessKey: g.AccessKey, secretKey: g.SecretKey})
	if err != nil {
		g.Stop()
		return nil, err
	}
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(g.Bucket)}); err != nil {
		g.Stop()
		return nil, fmt.Errorf("versitygw create bucket: %w", err)
	}
	return g, nil
}

// Stop kills the process and waits for it.
func (g *Versitygw) Stop() {
	g.once.Do(func() {
		_ = g.cmd.Process.Kill()
		select {
		case <-g.done:
		case <-time.After(10 * time.Second):
		}
	})
}
