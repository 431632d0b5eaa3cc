package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/datenlord/datenlord-go/meta"
)

// parseClusterFlags parses serve flags and validates the cluster part.
func parseClusterFlags(t *testing.T, args []string, env map[string]string) (*clusterConfig, error) {
	t.Helper()
	cfg, err := parseServeFlags(t, args, env)
	if err != nil {
		return nil, err
	}
	return &cfg.Cluster, cfg.Cluster.validate(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func TestClusterFlags(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	peers := "n1=127.0.0.1:7071,n2=127.0.0.1:7072,n3=127.0.0.1:7073"

	c, err := parseClusterFlags(t, []string{"--node-id", "n2", "--peers", peers, "--cluster-secret-file", secret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Secret != "s3cret" || c.Advertise != "127.0.0.1:7072" || len(c.peers()) != 3 || !c.clustered() {
		t.Fatalf("parsed %+v", c)
	}
	// Everything from the environment, the secret itself included.
	c, err = parseClusterFlags(t, nil, map[string]string{
		"DATENLORD_NODE_ID": "n4", "DATENLORD_JOIN": "127.0.0.1:7071", "DATENLORD_VOTER": "true",
		"DATENLORD_LISTEN": "127.0.0.1:7074", "DATENLORD_CLUSTER_SECRET": "envsecret",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeID != "n4" || c.Join != "127.0.0.1:7071" || !c.Voter || c.Listen != "127.0.0.1:7074" || c.Secret != "envsecret" {
		t.Fatalf("from env: %+v", c)
	}
	// Alone, the node keeps the Raft id of every single-node data dir.
	c, err = parseClusterFlags(t, nil, nil)
	if err != nil || c.NodeID != "node1" || c.clustered() {
		t.Fatalf("single node: %+v, %v", c, err)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-id", "n1", "--peers", peers}, "DATENLORD_CLUSTER_SECRET"},
		{[]string{"--node-id", "n9", "--peers", peers, "--cluster-secret-file", secret}, `--node-id "n9" is not in --peers`},
		{[]string{"--node-id", "n1", "--peers", "n1=nowhere", "--cluster-secret-file", secret}, "want id=host:port"},
		{[]string{"--node-id", "n1", "--peers", "n1=a:1,n1=b:2", "--cluster-secret-file", secret}, "appears twice"},
		{[]string{"--voter"}, "--voter needs --join"},
		{[]string{"--join", "127.0.0.1:7071", "--cluster-secret-file", filepath.Join(t.TempDir(), "missing")}, "--cluster-secret-file"},
	} {
		_, err := parseClusterFlags(t, tc.args, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestPrintStatus(t *testing.T) {
	var b bytes.Buffer
	err := printStatus(&b, meta.ClusterStatus{Node: "n2", LeaderID: "n1", LeaderAddr: "127.0.0.1:7071", Members: []meta.MemberStatus{
		{ID: "n2", Addr: "127.0.0.1:7072", Suffrage: "voter", NodeInfo: meta.NodeInfo{State: "follower", Applied: 41, LastContactMs: 3}},
		{ID: "n1", Addr: "127.0.0.1:7071", Suffrage: "voter", NodeInfo: meta.NodeInfo{State: "leader", Applied: 42}},
		{ID: "n4", Addr: "127.0.0.1:7074", Suffrage: "nonvoter", Error: "connection refused"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"leader: n1 (127.0.0.1:7071)", "n2  127.0.0.1:7072  voter     follower     41       3ms", "unreachable"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
