package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// awsCLI is the Debian awscli; a pyenv "aws" earlier in PATH may be v1.
const awsCLI = "/usr/bin/aws"

// s3cli runs the AWS CLI against a gateway.
type s3cli struct {
	t        *testing.T
	endpoint string
	env      []string
}

func (c *s3cli) run(secret string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processDeadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, awsCLI, append([]string{"--endpoint-url", c.endpoint}, args...)...)
	cmd.Env = append(append([]string{}, c.env...), "AWS_SECRET_ACCESS_KEY="+secret)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (c *s3cli) ok(secret string, args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(secret, args...)
	if err != nil {
		c.t.Fatalf("aws %v: %v\nstdout: %s\nstderr: %s", args, err, out, errOut)
	}
	return out
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("hash %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestS3GatewayAWSCLI runs the real AWS CLI and curl against the S3
// gateway of a real node with a real mount: buckets, a 200 MiB multipart
// upload and download, listings, presigned URLs, deletes, a wrong secret,
// and data crossing between the mount and S3 both ways.
func TestS3GatewayAWSCLI(t *testing.T) {
	requireFUSE(t)
	for _, tool := range []string{awsCLI, "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP: %s is not installed (ci/client-deps.sh installs it): %v", tool, err)
		}
	}
	const ak, secret = "E2EACCESSKEY", "e2e-secret-key"
	dataDir, mount := dirs(t)
	tmp := t.TempDir()
	credFile := filepath.Join(tmp, "creds")
	if err := os.WriteFile(credFile, []byte(ak+" "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	n := startNode(t, mount, nil, serveArgs(dataDir, mount, "--s3-listen", addr, "--client-credentials-file", credFile)...)
	n.waitMounted()
	deadline := time.Now().Add(readyTimeout)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the S3 gateway does not listen on %s: %v\n%s", addr, err, n.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cfg := filepath.Join(tmp, "aws-config")
	if err := os.WriteFile(cfg, []byte("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli := &s3cli{t: t, endpoint: "http://" + addr, env: append(cleanEnv(),
		"AWS_CONFIG_FILE="+cfg, "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(tmp, "none"),
		"AWS_ACCESS_KEY_ID="+ak, "AWS_DEFAULT_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true",
		"AWS_PAGER=", "HOME="+tmp)}

	cli.ok(secret, "s3", "mb", "s3://e2e")
	if fi, err := os.Stat(filepath.Join(mount, "e2e")); err != nil || !fi.IsDir() {
		t.Fatalf("the bucket is not a directory of the mount: %v", err)
	}

	// 200 MiB up (multipart) and down.
	const bigSize = 200 << 20
	big := filepath.Join(tmp, "big.bin")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, bigSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := sha256File(t, big)
	start := time.Now()
	cli.ok(secret, "s3", "cp", big, "s3://e2e/dir/big.bin")
	up := time.Since(start)
	down := filepath.Join(tmp, "down.bin")
	start = time.Now()
	cli.ok(secret, "s3", "cp", "s3://e2e/dir/big.bin", down)
	dl := time.Since(start)
	t.Logf("S3-E2E: aws s3 cp of 200 MiB: upload %.1fs (%.0f MB/s), download %.1fs (%.0f MB/s)",
		up.Seconds(), bigSize/1e6/up.Seconds(), dl.Seconds(), bigSize/1e6/dl.Seconds())
	if got := sha256File(t, down); got != want {
		t.Fatalf("downloaded sha256 %s, uploaded %s", got, want)
	}
	if got := sha256File(t, filepath.Join(mount, "e2e/dir/big.bin")); got != want {
		t.Fatalf("sha256 through the mount %s, uploaded %s", got, want)
	}
	if err := os.Remove(down); err != nil {
		t.Fatal(err)
	}

	// A file written through the mount is an object.
	fuseData := randomBytes(t, 100<<10+3)
	writeFile(t, filepath.Join(mount, "e2e/from-fuse.bin"), fuseData)
	ls := cli.ok(secret, "s3", "ls", "s3://e2e/")
	if !strings.Contains(ls, "PRE dir/") || !strings.Contains(ls, "from-fuse.bin") {
		t.Errorf("aws s3 ls s3://e2e/:\n%s", ls)
	}
	if ls := cli.ok(secret, "s3", "ls", "s3://e2e/dir/"); !strings.Contains(ls, fmt.Sprint(bigSize)+" big.bin") {
		t.Errorf("aws s3 ls s3://e2e/dir/:\n%s", ls)
	}
	if ls := cli.ok(secret, "s3", "ls", "s3://e2e/fr"); !strings.Contains(ls, "from-fuse.bin") || strings.Contains(ls, "dir/") {
		t.Errorf("aws s3 ls s3://e2e/fr (a prefix):\n%s", ls)
	}
	if ls := cli.ok(secret, "s3", "ls", "s3://e2e", "--recursive"); !strings.Contains(ls, "dir/big.bin") {
		t.Errorf("aws s3 ls --recursive:\n%s", ls)
	}
	got := cli.ok(secret, "s3", "cp", "s3://e2e/from-fuse.bin", "-")
	if got != string(fuseData) {
		t.Errorf("aws s3 cp of a FUSE file: %d bytes, want %d", len(got), len(fuseData))
	}

	// Presigned URL with curl; a tampered one gets no data.
	url := strings.TrimSpace(cli.ok(secret, "s3", "presign", "s3://e2e/from-fuse.bin", "--expires-in", "300"))
	out, err := exec.Command("curl", "-sS", "-f", url).Output()
	if err != nil || !bytes.Equal(out, fuseData) {
		t.Errorf("curl of the presigned URL: %v, %d bytes", err, len(out))
	}
	out, _ = exec.Command("curl", "-sS", "-w", "\n%{http_code}", strings.Replace(url, "from-fuse.bin", "dir/big.bin", 1)).Output()
	if !bytes.HasSuffix(out, []byte("\n403")) || !bytes.Contains(out, []byte("SignatureDoesNotMatch")) {
		t.Errorf("curl of a tampered presigned URL: %.300s", out)
	}

	// A wrong secret gets SignatureDoesNotMatch and no data.
	// (aws s3 cp starts with a HEAD, whose error has no body: 403 only.)
	stdout, stderr, err := cli.run("wrong-secret", "s3", "cp", "s3://e2e/from-fuse.bin", "-")
	if err == nil || stdout != "" || !strings.Contains(stderr, "403") {
		t.Errorf("wrong secret, s3 cp: err %v, stdout %d bytes, stderr %s", err, len(stdout), stderr)
	}
	wrongOut := filepath.Join(tmp, "wrong.out")
	_, stderr, err = cli.run("wrong-secret", "s3api", "get-object", "--bucket", "e2e", "--key", "from-fuse.bin", wrongOut)
	if _, serr := os.Stat(wrongOut); err == nil || !strings.Contains(stderr, "SignatureDoesNotMatch") || serr == nil {
		t.Errorf("wrong secret, s3api get-object: err %v, output file %v, stderr %s", err, serr, stderr)
	}

	// Remove through S3: gone from the mount, and the emptied prefix too.
	cli.ok(secret, "s3", "rm", "s3://e2e/dir/big.bin")
	if _, err := os.Stat(filepath.Join(mount, "e2e/dir")); !os.IsNotExist(err) {
		t.Errorf("after aws s3 rm the directory is still there: %v", err)
	}
	if ls := cli.ok(secret, "s3", "ls", "s3://e2e/"); strings.Contains(ls, "dir/") {
		t.Errorf("after rm, ls still shows dir/:\n%s", ls)
	}
	cli.ok(secret, "s3", "rm", "s3://e2e/from-fuse.bin")
	cli.ok(secret, "s3", "rb", "s3://e2e")
	n.stop()
}
