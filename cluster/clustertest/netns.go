package clustertest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// netnsPrefix starts the name of every namespace the harness creates;
// the creating process's pid follows, so that a later run can remove the
// namespaces of a test process that was killed before its cleanup ran.
const netnsPrefix = "dlt-"

// subnet is the private range of the cluster network. It exists only
// inside the cluster's namespaces, so concurrent clusters can reuse it.
const subnet = "10.213.0"

// nftTable is the nftables table that holds the partition rules in a
// node's namespace.
const nftTable = "dlpartition"

// network is a bridge namespace and one namespace per node, each node
// connected to the bridge by a veth pair.
type network struct {
	bridgeNS string
	nodeNS   []string
	addrs    []string // node i's address in the subnet
}

// netnsPath is the file nsenter --net joins for a named namespace.
func netnsPath(name string) string { return "/var/run/netns/" + name }

// newNetwork creates the namespaces, the bridge and the veth pairs. On
// error it removes what it created.
func newNetwork(nodes int) (*network, error) {
	if err := requireNetTools(); err != nil {
		return nil, err
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("namespace name: %w", err)
	}
	base := fmt.Sprintf("%s%d-%s", netnsPrefix, os.Getpid(), hex.EncodeToString(suffix))
	nw := &network{bridgeNS: base + "-br"}
	for i := 0; i < nodes; i++ {
		nw.nodeNS = append(nw.nodeNS, fmt.Sprintf("%s-n%d", base, i+1))
		nw.addrs = append(nw.addrs, fmt.Sprintf("%s.%d", subnet, i+1))
	}
	if err := nw.create(); err != nil {
		if rerr := nw.remove(); rerr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, rerr)
		}
		return nil, err
	}
	return nw, nil
}

// create builds the topology. The veth pairs are created inside the
// bridge namespace with their peer moved straight into the node's
// namespace, so no interface ever appears in the host's namespace.
func (nw *network) create() error {
	steps := [][]string{
		{"ip", "netns", "add", nw.bridgeNS},
		{"ip", "-n", nw.bridgeNS, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", nw.bridgeNS, "link", "set", "br0", "up"},
		{"ip", "-n", nw.bridgeNS, "link", "set", "lo", "up"},
	}
	for i, ns := range nw.nodeNS {
		port := fmt.Sprintf("v%d", i+1)
		steps = append(steps,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "-n", nw.bridgeNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"ip", "-n", nw.bridgeNS, "link", "set", port, "master", "br0"},
			[]string{"ip", "-n", nw.bridgeNS, "link", "set", port, "up"},
			[]string{"ip", "-n", ns, "addr", "add", nw.addrs[i] + "/24", "dev", "eth0"},
			[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// remove deletes the namespaces (their interfaces go with them).
func (nw *network) remove() error {
	var errs []string
	for _, ns := range append(append([]string(nil), nw.nodeNS...), nw.bridgeNS) {
		if _, err := os.Stat(netnsPath(ns)); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("ip netns del %s: %v: %s", ns, err, bytes.TrimSpace(out)))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove namespaces: %s", strings.Join(errs, "; "))
	}
	return nil
}

// requireNetTools checks for ip, nsenter and nft, and installs Debian's
// nftables if nft is missing and apt-get is at hand (ci/cluster-deps.sh
// does the same ahead of time).
func requireNetTools() error {
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (run ci/cluster-deps.sh): %w", tool, err)
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("nft not found and no apt-get to install nftables (run ci/cluster-deps.sh)")
	}
	cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", "nftables")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft not found; apt-get install nftables: %w: %s (run ci/cluster-deps.sh)", err, tail(string(out), 10))
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft still not found after installing nftables: %w", err)
	}
	return nil
}

// nft runs an nft script in the namespace ns.
func nft(ns, script string) error {
	cmd := exec.Command("nsenter", "--net="+netnsPath(ns), "--", "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s\nscript:\n%s", ns, err, bytes.TrimSpace(out), script)
	}
	return nil
}

// Partition cuts the cluster network into the given groups: a node reaches
// only the nodes of its own group, and a node in no group forms a group of
// its own. Packets are dropped in both directions (input and output hooks
// in every node's namespace), so connections hang rather than fail fast,
// as in a real partition. Loopback inside a namespace is untouched: a node
// still reaches itself. A new Partition replaces the previous one. It
// needs [Options.Netns]; it fails the test on error.
func (c *Cluster) Partition(groups ...[]*Node) {
	c.t.Helper()
	if c.net == nil {
		c.t.Fatalf("clustertest: Partition needs Options.Netns")
	}
	group := map[*Node]int{}
	for g, nodes := range groups {
		for _, n := range nodes {
			group[n] = g + 1
		}
	}
	for i, n := range c.nodes {
		if group[n] == 0 {
			group[n] = -(i + 1) // alone
		}
	}
	for i, n := range c.nodes {
		var cut []string
		for j, m := range c.nodes {
			if group[m] != group[n] {
				cut = append(cut, c.net.addrs[j])
			}
		}
		if err := c.healNode(i); err != nil {
			c.t.Fatalf("clustertest: partition: %v", err)
		}
		if len(cut) == 0 {
			continue
		}
		set := strings.Join(cut, ", ")
		script := fmt.Sprintf(`table inet %[1]s {
	chain in {
		type filter hook input priority -100; policy accept;
		ip saddr { %[2]s } drop
	}
	chain out {
		type filter hook output priority -100; policy accept;
		ip daddr { %[2]s } drop
	}
}
`, nftTable, set)
		if err := nft(c.net.nodeNS[i], script); err != nil {
			c.t.Fatalf("clustertest: partition: %v", err)
		}
	}
	c.t.Logf("clustertest: partitioned %s", describeGroups(c.nodes, group))
}

// Heal removes every partition rule: all nodes reach each other again.
func (c *Cluster) Heal() {
	c.t.Helper()
	if c.net == nil {
		c.t.Fatalf("clustertest: Heal needs Options.Netns")
	}
	for i := range c.nodes {
		if err := c.healNode(i); err != nil {
			c.t.Fatalf("clustertest: heal: %v", err)
		}
	}
	c.t.Logf("clustertest: healed the partition")
}

// healNode deletes the partition table in node i's namespace, if any.
func (c *Cluster) healNode(i int) error {
	ns := c.net.nodeNS[i]
	out, err := exec.Command("nsenter", "--net="+netnsPath(ns), "--", "nft", "list", "tables").CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft list tables in %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	if !strings.Contains(string(out), "table inet "+nftTable) {
		return nil
	}
	return nft(ns, "delete table inet "+nftTable+"\n")
}

// describeGroups renders a partition for the log: {n1 n2} | {n3}.
func describeGroups(nodes []*Node, group map[*Node]int) string {
	var order []int
	members := map[int][]string{}
	for _, n := range nodes {
		g := group[n]
		if _, ok := members[g]; !ok {
			order = append(order, g)
		}
		members[g] = append(members[g], n.id)
	}
	parts := make([]string, 0, len(order))
	for _, g := range order {
		parts = append(parts, "{"+strings.Join(members[g], " ")+"}")
	}
	return strings.Join(parts, " | ")
}
