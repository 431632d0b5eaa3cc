// Package s3test runs a real S3-compatible server for tests: versitygw
// (github.com/versity/versitygw) serving a temporary directory through its
// POSIX backend, on a free port of 127.0.0.1, with one bucket created.
//
// # Use
//
//	srv := s3test.Start(t)
//	s, err := store.Open(ctx, srv.URL("node1", "timeout=2s"),
//		store.Options{S3: store.S3Options{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}})
//
// or srv.Setenv(t) to give the credentials through the environment, as a
// deployment does. srv.Stop and srv.Restart simulate an outage (the data
// survives); the process is killed when the test ends.
//
// # The binary
//
// Start looks for versitygw in $DATENLORD_VERSITYGW, then in PATH, then in
// $(go env GOBIN) or $(go env GOPATH)/bin. When it is nowhere, Start
// installs it with `go install` (what ci/install-versitygw.sh does; a few
// minutes) rather than skip: tests of the S3 backend never pass without a
// real server. If that fails too, the test fails saying how to install it.
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Version is the versitygw release the harness installs when it finds
// none (keep in step with ci/install-versitygw.sh).
const Version = "v1.8.0"

// Module is the package `go install` builds.
const Module = "github.com/versity/versitygw/cmd/versitygw"

// EnvBinary names the environment variable that points at a versitygw
// binary, overriding the search.
const EnvBinary = "DATENLORD_VERSITYGW"

const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// Server is a running versitygw. Its exported fields are fixed for its
// life (a Restart reuses the port and the data directory).
type Server struct {
	// Endpoint is the server's base URL, http://127.0.0.1:PORT.
	Endpoint string
	// Bucket is the bucket Start created.
	Bucket string
	// AccessKey and SecretKey are the root credentials of the server.
	AccessKey string
	SecretKey string
	// Region is the region the server answers for.
	Region string

	t    testing.TB
	bin  string
	dir  string
	addr string

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of the server binary.
type process struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed when the process has exited
}

// Start runs versitygw on a free port with a fresh data directory, waits
// until it answers and creates a bucket. The server is killed when the
// test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		Bucket:    "datenlord-test",
		AccessKey: "datenlordtestaccess",
		SecretKey: "datenlordtestsecret0123456789",
		Region:    "us-east-1",
		t:         t,
		bin:       Binary(t),
		dir:       t.TempDir(),
	}
	t.Cleanup(s.Stop)
	var err error
	for try := 0; try < 3; try++ { // a free port can be taken before we bind it
		if s.addr, err = freeAddr(); err != nil {
			t.Fatalf("s3test: pick a port: %v", err)
		}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("s3test: start versitygw: %v", err)
	}
	s.Endpoint = "http://" + s.addr
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		t.Fatalf("s3test: create bucket %s: %v\nversitygw output:\n%s", s.Bucket, err, s.output())
	}
	return s
}

// URL returns the store URL of prefix on this server, with its endpoint
// and region, and any extra query parameters ("timeout=2s", "retries=2").
func (s *Server) URL(prefix string, params ...string) string {
	q := url.Values{}
	q.Set("endpoint", s.Endpoint)
	q.Set("region", s.Region)
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		q.Set(k, v)
	}
	u := url.URL{Scheme: "s3", Host: s.Bucket, Path: "/" + strings.Trim(prefix, "/"), RawQuery: q.Encode()}
	return u.String()
}

// Setenv puts the server's credentials and region in the environment of
// the test (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), where
// the AWS SDK's default chain finds them, and keeps the SDK from reading
// the user's ~/.aws files.
func (s *Server) Setenv(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", s.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", s.Region)
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(s.dir, "no-aws-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(s.dir, "no-aws-credentials"))
}

// Client returns a plain AWS SDK client for the server (path-style, the
// server's credentials, no checksums beyond what S3 requires), for tests
// that look behind the store or compare with it.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:                     s.Region,
		BaseEndpoint:               aws.String(s.Endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// Stop kills the server and waits for it to exit; the data directory
// stays for Restart. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		s.t.Errorf("s3test: versitygw (pid %d) did not exit %s after SIGKILL", p.cmd.Process.Pid, stopTimeout)
	}
}

// Restart starts the server again after Stop, on the same port and data
// directory, and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	deadline := time.Now().Add(readyTimeout)
	for {
		if err = s.start(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("s3test: restart versitygw on %s: %v", s.addr, err)
		}
		time.Sleep(100 * time.Millisecond) // the port may linger briefly
	}
}

// start runs the binary on s.addr and waits until it answers HTTP.
func (s *Server) start() error {
	out := &lockedBuffer{}
	cmd := exec.Command(s.bin,
		"--access", s.AccessKey,
		"--secret", s.SecretKey,
		"--region", s.Region,
		"--port", s.addr,
		"--keep-alive",
		"--quiet",
		"posix", s.dir)
	cmd.Stdout = out
	cmd.Stderr = out
	// The server must not pick up credentials or settings meant for a real
	// gateway from the test's environment.
	cmd.Env = filterEnv(os.Environ(), "ROOT_", "VGW_")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	deadline := time.Now().Add(readyTimeout)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-p.done:
			s.mu.Lock()
			s.proc = nil
			s.mu.Unlock()
			return fmt.Errorf("versitygw exited at start-up (%v); output:\n%s", cmd.ProcessState, out.String())
		default:
		}
		resp, err := client.Get("http://" + s.addr + "/")
		if err == nil {
			resp.Body.Close() // any answer (403 without credentials) means it serves
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("versitygw not answering on %s after %s: %v; output:\n%s", s.addr, readyTimeout, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// output returns what the current process printed.
func (s *Server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return "(not running)"
	}
	return s.proc.out.String()
}

// Binary returns the path of a versitygw binary, installing it with go
// install when there is none; it fails the test if that fails.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvBinary); p != "" {
		if err := isExecutable(p); err != nil {
			t.Fatalf("s3test: $%s=%s: %v", EnvBinary, p, err)
		}
		return p
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	gobin, err := goBin()
	if err != nil {
		t.Fatalf("s3test: versitygw not in PATH and %v; install it with ci/install-versitygw.sh", err)
	}
	p := filepath.Join(gobin, "versitygw")
	if isExecutable(p) == nil {
		return p
	}
	t.Logf("s3test: versitygw not found; installing %s@%s into %s (a few minutes)", Module, Version, gobin)
	start := time.Now()
	cmd := exec.Command("go", "install", Module+"@"+Version)
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	cmd.Dir = os.TempDir() // outside any module: install pkg@version ignores ours anyway
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("s3test: go install %s@%s failed (%v); install versitygw with ci/install-versitygw.sh or point $%s at a binary:\n%s",
			Module, Version, err, EnvBinary, out)
	}
	if err := isExecutable(p); err != nil {
		t.Fatalf("s3test: go install %s@%s succeeded but %v", Module, Version, err)
	}
	t.Logf("s3test: installed %s in %s", p, time.Since(start).Round(time.Second))
	return p
}

// goBin returns where go install puts binaries.
func goBin() (string, error) {
	out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output()
	if err != nil {
		return "", fmt.Errorf("go env: %w", err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) == 2 && lines[0] != "" {
		return lines[0], nil
	}
	if len(lines) == 2 && lines[1] != "" {
		return filepath.Join(strings.Split(lines[1], string(os.PathListSeparator))[0], "bin"), nil
	}
	return "", errors.New("go env reports neither GOBIN nor GOPATH")
}

func isExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// freeAddr returns a 127.0.0.1 address with a port free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// filterEnv drops the variables with any of the prefixes.
func filterEnv(env []string, prefixes ...string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// lockedBuffer collects process output written from another goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 { // keep the first MiB: enough to diagnose
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
