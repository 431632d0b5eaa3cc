package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// defaultListen is where a clustered node serves the node RPC and Raft.
const defaultListen = "127.0.0.1:7070"

// secretEnv holds the cluster secret itself (rather than a file naming
// it); --cluster-secret-file wins over it.
const secretEnv = envPrefix + "CLUSTER_SECRET"

// clusterConfig is the membership part of the serve configuration.
type clusterConfig struct {
	// NodeID names this node; empty: the host name in a cluster, "node1"
	// alone (the Raft id of every single-node data dir).
	NodeID    string
	Listen    string
	Advertise string
	// PeersFlag is --peers as given (peers parses it).
	PeersFlag  string
	Join       string
	Voter      bool
	SecretFile string
	// Secret is the cluster secret, read by validate.
	Secret string
}

// peers returns --peers parsed (nil without it); validate checked it.
func (c *clusterConfig) peers() map[string]string {
	if c.PeersFlag == "" {
		return nil
	}
	p, _ := parsePeers(c.PeersFlag)
	return p
}

// addClusterFlags defines the cluster flags of serve.
func addClusterFlags(fs *pflag.FlagSet, c *clusterConfig) {
	fs.StringVar(&c.NodeID, "node-id", "", `this node's id in the cluster (default: the host name with --peers or --join, "node1" alone)`)
	fs.StringVar(&c.Listen, "listen", defaultListen, "address of the node RPC and Raft (with --peers or --join)")
	fs.StringVar(&c.Advertise, "advertise", "", "address other nodes reach this node at (default: this node's --peers entry, else --listen)")
	fs.StringVar(&c.PeersFlag, "peers", "", "bootstrap voters id1=host:port,id2=host:port,... (the same list on every node)")
	fs.StringVar(&c.Join, "join", "", "host:port of any member of a running cluster to join (as a non-voter unless --voter)")
	fs.BoolVar(&c.Voter, "voter", false, "join as a voter (with --join)")
	fs.StringVar(&c.SecretFile, "cluster-secret-file", "", "file holding the cluster secret that nodes authenticate each other with (or the secret itself in "+secretEnv+"); required with --peers or --join")
}

// clustered reports whether the node takes part in a cluster.
func (c *clusterConfig) clustered() bool { return c.PeersFlag != "" || c.Join != "" }

// validate checks the cluster flags and reads the secret; lookupEnv finds
// DATENLORD_CLUSTER_SECRET.
func (c *clusterConfig) validate(lookupEnv func(string) (string, bool)) error {
	if !c.clustered() {
		if c.Voter {
			return errors.New("--voter needs --join")
		}
		if c.NodeID == "" {
			c.NodeID = "node1"
		}
		return nil
	}
	if c.NodeID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "node1"
		}
		c.NodeID = host
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port: %w", c.Listen, err)
	}
	if c.PeersFlag != "" {
		peers, err := parsePeers(c.PeersFlag)
		if err != nil {
			return fmt.Errorf("--peers: %w", err)
		}
		addr, ok := peers[c.NodeID]
		if !ok {
			return fmt.Errorf("--node-id %q is not in --peers %s: name this node with --node-id", c.NodeID, c.PeersFlag)
		}
		if c.Advertise == "" {
			c.Advertise = addr
		}
	}
	if c.Voter && c.Join == "" {
		return errors.New("--voter needs --join")
	}
	if c.Join != "" {
		if _, _, err := net.SplitHostPort(c.Join); err != nil {
			return fmt.Errorf("--join %q: want host:port: %w", c.Join, err)
		}
	}
	if c.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
			return fmt.Errorf("--advertise %q: want host:port: %w", c.Advertise, err)
		}
	}
	secret, err := readSecret(c.SecretFile, lookupEnv)
	if err != nil {
		return fmt.Errorf("--peers and --join need the cluster secret: %w", err)
	}
	c.Secret = string(secret)
	return nil
}

// readSecret reads the cluster secret from file, or else from
// DATENLORD_CLUSTER_SECRET. Surrounding white space is ignored.
func readSecret(file string, lookupEnv func(string) (string, bool)) ([]byte, error) {
	var s string
	switch v, ok := lookupEnv(secretEnv); {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--cluster-secret-file: %w", err)
		}
		s = string(b)
	case ok:
		s = v
	default:
		return nil, fmt.Errorf("give --cluster-secret-file FILE or set %s", secretEnv)
	}
	if s = strings.TrimSpace(s); s == "" {
		return nil, errors.New("the cluster secret is empty")
	}
	return []byte(s), nil
}

// parsePeers parses id1=host:port,id2=host:port.
func parsePeers(s string) (map[string]string, error) {
	peers := map[string]string{}
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		id, addr, ok := strings.Cut(p, "=")
		if !ok || id == "" {
			return nil, fmt.Errorf("%q: want id=host:port", p)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%q: want id=host:port: %w", p, err)
		}
		if _, dup := peers[id]; dup {
			return nil, fmt.Errorf("node id %q appears twice", id)
		}
		peers[id] = addr
	}
	if len(peers) == 0 {
		return nil, errors.New("no peers given")
	}
	return peers, nil
}

// startTransport starts the node transport of a clustered node.
func startTransport(ctx context.Context, c clusterConfig, reg prometheus.Registerer, logger *slog.Logger) (*tcpfallback.Transport, error) {
	t, err := tcpfallback.New(ctx, tcpfallback.Config{
		NodeID:     c.NodeID,
		Listen:     c.Listen,
		Advertise:  c.Advertise,
		Secret:     []byte(c.Secret),
		Registerer: reg,
		Logger:     logger,
	})
	if err != nil {
		return nil, fmt.Errorf("start the node transport on --listen %s: %w", c.Listen, err)
	}
	return t, nil
}

// clusterClientFlags are the flags every cluster subcommand takes.
type clusterClientFlags struct {
	addr       string
	secretFile string
	timeout    time.Duration
}

func (f *clusterClientFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.addr, "addr", "", "host:port (--listen) of any node of the cluster (required)")
	fs.StringVar(&f.secretFile, "cluster-secret-file", "", "file holding the cluster secret (or the secret itself in "+secretEnv+")")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for the answer")
}

// dial prepares a client-only transport and a context for one request.
func (f *clusterClientFlags) dial(cmd *cobra.Command, s streams) (*tcpfallback.Transport, context.Context, context.CancelFunc, error) {
	if err := applyEnv(cmd.Flags(), s.LookupEnv); err != nil {
		return nil, nil, nil, err
	}
	if f.addr == "" {
		return nil, nil, nil, &usageError{cmd: cmd, err: errors.New("--addr host:port is required")}
	}
	secret, err := readSecret(f.secretFile, s.LookupEnv)
	if err != nil {
		return nil, nil, nil, &usageError{cmd: cmd, err: err}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	t, err := tcpfallback.New(ctx, tcpfallback.Config{
		NodeID: "datenlord-node-cli",
		Secret: secret,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("create client transport: %w", err)
	}
	return t, ctx, cancel, nil
}

// newClusterCmd returns the `cluster` command and its subcommands.
func newClusterCmd(s streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show and change the metadata cluster's membership",
		Long: `cluster talks to a running node (any member, at its --listen address) over the
authenticated node RPC: status shows the leader and every member with its role,
state, applied Raft index and last contact with the leader; add and remove
change the membership (the request is forwarded to the leader).

The cluster secret comes from --cluster-secret-file or DATENLORD_CLUSTER_SECRET.`,
		Example: `  # Who leads, and is every member caught up?
  datenlord-node cluster status --addr 127.0.0.1:7071 --cluster-secret-file /etc/datenlord/secret

  # Add node n4 (started with --join, or not yet started) as a voter, then remove n2
  datenlord-node cluster add n4 127.0.0.1:7074 --voter --addr 127.0.0.1:7071
  datenlord-node cluster remove n2 --addr 127.0.0.1:7071`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newClusterStatusCmd(s), newClusterAddCmd(s), newClusterRemoveCmd(s))
	return cmd
}

func newClusterStatusCmd(s streams) *cobra.Command {
	var f clusterClientFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the leader and the members with their roles and applied indexes",
		Example: `  # Table of members, as node 127.0.0.1:7071 sees the cluster
  DATENLORD_CLUSTER_SECRET=s3cret datenlord-node cluster status --addr 127.0.0.1:7071

  # The same as JSON, for scripts
  datenlord-node cluster status --addr 127.0.0.1:7071 --cluster-secret-file secret --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, ctx, cancel, err := f.dial(cmd, s)
			if err != nil {
				return err
			}
			defer cancel()
			defer t.Close()
			st, err := meta.RemoteStatus(ctx, t, f.addr)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			return printStatus(cmd.OutOrStdout(), st)
		},
	}
	f.add(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

// printStatus renders a status as a table.
func printStatus(w io.Writer, st meta.ClusterStatus) error {
	leader := st.LeaderID
	if leader == "" {
		leader = "none (election in progress or no quorum)"
	} else {
		leader += " (" + st.LeaderAddr + ")"
	}
	fmt.Fprintf(w, "leader: %s\nasked:  %s\n\n", leader, st.Node)
	members := append([]meta.MemberStatus(nil), st.Members...)
	sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tSTATE\tAPPLIED\tLAST CONTACT")
	for _, m := range members {
		state, applied, contact := m.State, fmt.Sprint(m.Applied), "-"
		switch {
		case m.Error != "":
			state, applied = "unreachable", "-"
		case m.State == "leader":
		case m.LastContactMs >= 0:
			contact = (time.Duration(m.LastContactMs) * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Addr, m.Suffrage, state, applied, contact)
	}
	return tw.Flush()
}

func newClusterAddCmd(s streams) *cobra.Command {
	var f clusterClientFlags
	var voter bool
	cmd := &cobra.Command{
		Use:   "add ID HOST:PORT",
		Short: "Add a node to the cluster (a non-voter unless --voter; promotes an existing non-voter)",
		Example: `  # Add n4 as a non-voter (it receives the log and serves reads)
  datenlord-node cluster add n4 10.0.0.4:7070 --addr 10.0.0.1:7070

  # Promote it to a voter
  datenlord-node cluster add n4 10.0.0.4:7070 --voter --addr 10.0.0.1:7070`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, err := net.SplitHostPort(args[1]); err != nil {
				return &usageError{cmd: cmd, err: fmt.Errorf("node address %q: want host:port: %w", args[1], err)}
			}
			t, ctx, cancel, err := f.dial(cmd, s)
			if err != nil {
				return err
			}
			defer cancel()
			defer t.Close()
			if err := meta.RemoteAddMember(ctx, t, f.addr, args[0], args[1], voter); err != nil {
				return err
			}
			role := "non-voter"
			if voter {
				role = "voter"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "added %s (%s) as a %s\n", args[0], args[1], role)
			return err
		},
	}
	f.add(cmd.Flags())
	cmd.Flags().BoolVar(&voter, "voter", false, "add the node as a voter")
	return cmd
}

func newClusterRemoveCmd(s streams) *cobra.Command {
	var f clusterClientFlags
	cmd := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a node from the cluster",
		Example: `  # Remove n2 (for good: to come back it must join again)
  datenlord-node cluster remove n2 --addr 10.0.0.1:7070`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, ctx, cancel, err := f.dial(cmd, s)
			if err != nil {
				return err
			}
			defer cancel()
			defer t.Close()
			if err := meta.RemoteRemoveMember(ctx, t, f.addr, args[0]); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return err
		},
	}
	f.add(cmd.Flags())
	return cmd
}
