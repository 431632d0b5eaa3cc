package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status is what `datenlord-node cluster status --json` reports through
// one node.
type Status struct {
	// Node is the id of the node that answered, if reported.
	Node string
	// Leader is the id of the leader the node knows, or "" if none.
	Leader string
	// Members are the cluster's members.
	Members []Member
	// Raw is the JSON as printed.
	Raw string
}

// Member is one member in a [Status].
type Member struct {
	ID      string
	Addr    string
	Role    string // "voter" or "nonvoter"
	Applied uint64 // applied index, 0 if not reported
	State   string // the member's own Raft state (leader, follower, ...), if reported
	Error   string // why the member could not be asked, if reported
}

// Status asks node n (through its own network namespace) for the cluster
// status, with a timeout of a few seconds.
func (c *Cluster) Status(n *Node) (Status, error) {
	ctx, cancel := withTimeout(5 * time.Second)
	defer cancel()
	args := []string{"cluster", "status", "--addr", n.addr, "--json"}
	if c.clusterCLI.secretFlag {
		args = append(args, "--cluster-secret-file", c.secretFile)
	}
	cmd := n.command(ctx, args...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Status{}, fmt.Errorf("cluster status via %s: %w: %s", n.id, err, strings.TrimSpace(stderr.String()))
	}
	st, err := parseStatus(stdout.Bytes())
	if err != nil {
		return Status{}, fmt.Errorf("cluster status via %s: %w", n.id, err)
	}
	return st, nil
}

// statusResult is one node's answer in statusAll.
type statusResult struct {
	st  Status
	err error
}

// statusAll asks the nodes for the cluster status in parallel; answer i
// is node i's.
func (c *Cluster) statusAll(nodes []*Node) []statusResult {
	out := make([]statusResult, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].st, out[i].err = c.Status(n)
		}()
	}
	wg.Wait()
	return out
}

// parseStatus decodes the --json output. It accepts the common spellings
// of the fields (leader as an id, an address or an object; members under
// "members", "servers" or "nodes") so that the harness does not depend on
// cosmetic choices of the CLI.
func parseStatus(b []byte) (Status, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return Status{}, fmt.Errorf("decode %q: %w", b, err)
	}
	st := Status{Raw: string(b), Node: str(raw, "node", "Node", "node_id")}
	for _, key := range []string{"members", "servers", "nodes", "Members", "Servers"} {
		list, ok := raw[key].([]any)
		if !ok {
			continue
		}
		for _, m := range list {
			obj, ok := m.(map[string]any)
			if !ok {
				continue
			}
			st.Members = append(st.Members, Member{
				ID:      str(obj, "id", "ID", "node_id", "nodeId", "name"),
				Addr:    str(obj, "address", "addr", "Address", "listen"),
				Role:    strings.ToLower(str(obj, "role", "suffrage", "Role", "Suffrage")),
				Applied: num(obj, "applied", "applied_index", "appliedIndex", "AppliedIndex", "last_applied"),
				State:   strings.ToLower(str(obj, "state", "State")),
				Error:   str(obj, "error", "Error"),
			})
		}
		break
	}
	var leader string
	switch l := raw["leader"].(type) {
	case string:
		leader = l
	case map[string]any:
		leader = str(l, "id", "ID", "node_id", "nodeId")
		if leader == "" {
			leader = str(l, "address", "addr")
		}
	}
	if leader == "" {
		leader = str(raw, "leader_id", "leaderId", "LeaderID")
	}
	// A leader given by address, or as "id@addr" or "id (addr)": map to the id.
	for _, m := range st.Members {
		if leader != "" && (leader == m.Addr || strings.HasPrefix(leader, m.ID+"@") || strings.HasPrefix(leader, m.ID+" ")) {
			leader = m.ID
		}
	}
	st.Leader = leader
	return st, nil
}

// str returns the first of keys that holds a string (or number) in obj.
func str(obj map[string]any, keys ...string) string {
	for _, k := range keys {
		switch v := obj[k].(type) {
		case string:
			return v
		case float64:
			return strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	return ""
}

// num returns the first of keys that holds a number in obj.
func num(obj map[string]any, keys ...string) uint64 {
	for _, k := range keys {
		switch v := obj[k].(type) {
		case float64:
			return uint64(v)
		case string:
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return 0
}

// Leader asks every running node for the leader and returns the node a
// majority of the cluster names. It returns an error while there is none
// (an election is running, or no majority is reachable).
func (c *Cluster) Leader() (*Node, error) {
	votes := map[string]int{}
	var errs []string
	var running []*Node
	for _, n := range c.nodes {
		if n.Running() {
			running = append(running, n)
		}
	}
	for _, res := range c.statusAll(running) {
		if res.err != nil {
			errs = append(errs, res.err.Error())
			continue
		}
		if res.st.Leader != "" {
			votes[res.st.Leader]++
		}
	}
	for id, v := range votes {
		if v > len(c.nodes)/2 {
			if n := c.NodeByID(id); n != nil {
				return n, nil
			}
			return nil, fmt.Errorf("a majority names leader %q, which is not a node of this cluster", id)
		}
	}
	return nil, fmt.Errorf("no leader named by a majority of %d nodes (votes %v; errors: %s)", len(c.nodes), votes, strings.Join(errs, "; "))
}

// WaitLeader waits until every node in among (default: every running
// node) answers cluster status and all name the same leader, which is one
// of among, and returns it. It fails the test after timeout.
func (c *Cluster) WaitLeader(timeout time.Duration, among ...*Node) *Node {
	c.t.Helper()
	n, err := c.waitLeader(timeout, among...)
	if err != nil {
		c.t.Fatalf("clustertest: %v", err)
	}
	return n
}

// waitLeader is WaitLeader without failing the test.
func (c *Cluster) waitLeader(timeout time.Duration, among ...*Node) (*Node, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		set := among
		if len(set) == 0 {
			for _, n := range c.nodes {
				if n.Running() {
					set = append(set, n)
				}
			}
		}
		leaders := map[string][]string{}
		ok := len(set) > 0
		for i, res := range c.statusAll(set) {
			if res.err != nil {
				ok, last = false, res.err.Error()
				break
			}
			leaders[res.st.Leader] = append(leaders[res.st.Leader], set[i].id)
		}
		if ok && len(leaders) == 1 {
			for id := range leaders {
				for _, n := range set {
					if n.id == id {
						return n, nil
					}
				}
				last = fmt.Sprintf("leader %q is not among %v", id, set)
			}
		} else if ok {
			keys := make([]string, 0, len(leaders))
			for id, by := range leaders {
				keys = append(keys, fmt.Sprintf("%q per %v", id, by))
			}
			sort.Strings(keys)
			last = "nodes disagree on the leader: " + strings.Join(keys, ", ")
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no agreed leader after %s: %s", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
