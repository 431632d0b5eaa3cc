package kv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/datenlord/datenlord-go/internal/clientauth"
	"github.com/datenlord/datenlord-go/meta"
)

// TestTLS serves TLS with a self-signed certificate and talks to it with
// a client that trusts it.
func TestTLS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kv"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := NewMachine()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := meta.Open(ctx, meta.Config{Dir: t.TempDir(), KV: m, Logger: logger, ElectionTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	s, err := New(Config{Meta: svc, Machine: m, Logger: logger,
		TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 5 * time.Second, TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "tls", "yes"); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdctlAuth runs the real etcdctl with --user against a server that
// requires credentials.
func TestEtcdctlAuth(t *testing.T) {
	const bin = "/usr/bin/etcdctl"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("SKIP: %s is missing (ci/client-deps.sh installs etcd-client): %v", bin, err)
	}
	s, _ := startSingle(t, clientauth.New("ak", "sk"), "ak", "sk")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--endpoints", s.Addr()}, args...)...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("--user", "ak:sk", "put", "a", "1"); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("put with credentials: %v %q", err, out)
	}
	if out, err := run("--user", "ak:sk", "get", "a", "--print-value-only"); err != nil || out != "1\n" {
		t.Fatalf("get with credentials: %v %q", err, out)
	}
	if out, err := run("--user", "ak:wrong", "get", "a"); err == nil || !strings.Contains(out, "authentication failed") {
		t.Fatalf("wrong password: %v %q", err, out)
	}
	if out, err := run("get", "a"); err == nil || !strings.Contains(out, "user name is empty") {
		t.Fatalf("no credentials: %v %q", err, out)
	}
}
