package clustertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// BinaryEnv names the environment variable that holds the path of the
// datenlord-node binary the harness runs. [Main] sets it after building;
// set it yourself to test a prebuilt binary (Main then does not build).
const BinaryEnv = "DATENLORD_NODE_BINARY"

// nodePackage is the import path of the node binary.
const nodePackage = "github.com/datenlord/datenlord-go/cmd/datenlord-node"

// Main builds the datenlord-node binary once for the test process, runs
// the tests and removes the binary. Call it from TestMain:
//
//	func TestMain(m *testing.M) { clustertest.Main(m) }
//
// It exits the process with the tests' exit code.
func Main(m *testing.M) {
	if os.Getenv(BinaryEnv) != "" {
		os.Exit(m.Run())
	}
	// Named after the pid, so that a later run removes it if this process
	// is killed before it can (see sweepStale).
	dir, err := os.MkdirTemp("", fmt.Sprintf("dlcluster-%d-bin-", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "clustertest: temp dir:", err)
		os.Exit(1)
	}
	bin, err := BuildBinary(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "clustertest:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if err := os.Setenv(BinaryEnv, bin); err != nil {
		fmt.Fprintln(os.Stderr, "clustertest: set", BinaryEnv+":", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// BuildBinary builds datenlord-node into dir and returns its path. It must
// run inside the datenlord-go module (any test of it does).
func BuildBinary(dir string) (string, error) {
	bin := filepath.Join(dir, "datenlord-node")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "build", "-ldflags", "-X main.version=cluster-test -X main.commit=cluster-test", "-o", bin, nodePackage)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", nodePackage, err, out)
	}
	return bin, nil
}
