package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Node RPC ops of the cache commands (the cache's range 0x0200-0x02ff;
// the neighbor tier itself uses 0x0200-0x020f).
const (
	opCacheResolve uint16 = 0x0210 // paths -> files with their sizes
	opCacheLocate  uint16 = 0x0211 // one file -> bytes per node in memory and on disk
	opCacheWarm    uint16 = 0x0212 // one file -> loaded into its owners' caches
)

// addTransportFlag defines --transport (serve).
func addTransportFlag(fs *pflag.FlagSet, kind *string) {
	fs.StringVar(kind, "transport", "auto", "neighbor page transport: auto (RDMA where both peers have it, else TCP; TCP for now), tcp or rdma")
}

// neighborTransportName checks --transport and returns the transport the
// neighbor tier uses.
func neighborTransportName(kind string) (string, error) {
	switch kind {
	case "auto", "tcp", "":
		return "tcp", nil
	case "rdma":
		return "rdma", nil
	}
	return "", fmt.Errorf("--transport %q: want auto, tcp or rdma", kind)
}

// clusterStatuser is the part of *meta.Service the membership adapter
// needs.
type clusterStatuser interface {
	Status(ctx context.Context) (meta.ClusterStatus, error)
}

// metaMembership adapts the metadata cluster's membership to
// cache.Membership: every member of the Raft configuration is a cache
// node at its node-transport address (Raft runs on the same port). It
// refreshes in the background; Nodes never blocks.
type metaMembership struct {
	md    clusterStatuser
	self  cache.Node
	log   *slog.Logger
	mu    sync.Mutex
	nodes []cache.Node
	stop  chan struct{}
	done  chan struct{}
}

func newMetaMembership(md clusterStatuser, self cache.Node, every time.Duration, log *slog.Logger) *metaMembership {
	m := &metaMembership{md: md, self: self, log: log, nodes: []cache.Node{self}, stop: make(chan struct{}), done: make(chan struct{})}
	m.refresh()
	go func() {
		defer close(m.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.refresh()
			}
		}
	}()
	return m
}

func (m *metaMembership) refresh() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := m.md.Status(ctx)
	if err != nil {
		m.log.Debug("cache membership refresh failed; keeping the last view", "err", err)
		return
	}
	nodes := make([]cache.Node, 0, len(st.Members))
	for _, mb := range st.Members {
		if mb.ID == m.self.ID {
			nodes = append(nodes, m.self)
			continue
		}
		nodes = append(nodes, cache.Node{ID: mb.ID, Addr: mb.Addr})
	}
	if !slices.ContainsFunc(nodes, func(n cache.Node) bool { return n.ID == m.self.ID }) {
		nodes = append(nodes, m.self)
	}
	m.mu.Lock()
	m.nodes = nodes
	m.mu.Unlock()
}

// Nodes returns the last known members.
func (m *metaMembership) Nodes() []cache.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodes
}

// Close stops the refresher.
func (m *metaMembership) Close() { close(m.stop); <-m.done }

// startNeighbor creates the neighbor cache tier of a clustered node over
// its node transport, with the metadata cluster's members as cache nodes.
// The tier must be given to cache.New and then served (serveNeighbor).
// With RDMA (--transport auto on a node with a device, or rdma) the tier
// reads pages one-sidedly (rdmaslot); serveArena then serves this node's
// arena to peers, and stop releases the RDMA resources too.
func startNeighbor(tr *tcpfallback.Transport, md clusterStatuser, nodeID, transportKind string, pageSize, blockSize int, reg prometheus.Registerer, logger *slog.Logger) (nb *cache.NeighborTier, stop func(), serveArena func(*cache.Cache), err error) {
	name, err := neighborTransportName(transportKind)
	if err != nil {
		return nil, nil, nil, err
	}
	rd, err := openNeighborRDMA(tr, transportKind, pageSize, logger)
	if err != nil {
		return nil, nil, nil, err
	}
	var ntr cache.NeighborTransport = tr
	if rd != nil {
		ntr, name = rd.slots, "rdma"
	} else {
		name = "tcp"
	}
	members := newMetaMembership(md, cache.Node{ID: nodeID, Addr: tr.Addr()}, 2*time.Second, logger)
	nb, err = cache.NewNeighborTier(cache.NeighborConfig{
		Self: nodeID, Membership: members, Transport: ntr, TransportName: name,
		PageSize: pageSize, BlockSize: blockSize, Registerer: reg, Logger: logger,
	})
	if err != nil {
		members.Close()
		rd.close()
		return nil, nil, nil, fmt.Errorf("create the neighbor cache tier: %w", err)
	}
	logger.Info("neighbor cache tier on", "transport", name)
	stop = func() {
		members.Close()
		if err := rd.close(); err != nil {
			logger.Warn("release RDMA resources", "err", err)
		}
	}
	return nb, stop, rd.serve, nil
}

// serveNeighbor answers peers' page requests from c and registers the
// handlers of `cache locate` and `cache warmup`, which resolve paths
// through md.
func serveNeighbor(tr *tcpfallback.Transport, nb *cache.NeighborTier, c *cache.Cache, md *meta.Service) error {
	if err := nb.Serve(c); err != nil {
		return err
	}
	h := &cacheCmdHandler{md: md, nb: nb}
	tr.Handle(opCacheResolve, h.resolve)
	tr.Handle(opCacheLocate, h.locate)
	tr.Handle(opCacheWarm, h.warm)
	return nil
}

// cacheFile is one regular file named by a cache command.
type cacheFile struct {
	Path string `json:"path"`
	Ino  uint64 `json:"ino"`
	Size uint64 `json:"size"`
}

// fileLocation is where one file's bytes are cached.
type fileLocation struct {
	Path  string                  `json:"path"`
	Size  uint64                  `json:"size"`
	Nodes map[string]nodeHoldings `json:"nodes"`
	// Errors lists nodes that could not be asked.
	Errors map[string]string `json:"errors,omitempty"`
}

type nodeHoldings struct {
	MemoryBytes uint64 `json:"memory_bytes"`
	DiskBytes   uint64 `json:"disk_bytes"`
	OwnedBytes  uint64 `json:"owned_bytes"`
}

type warmResult struct {
	Bytes   uint64 `json:"bytes"`
	Fetched int    `json:"blocks_fetched"`
}

// cacheCmdHandler serves the cache commands on a node.
type cacheCmdHandler struct {
	md *meta.Service
	nb *cache.NeighborTier
}

// maxResolve bounds the files one resolve answers with.
const maxResolve = 1 << 20

// resolve expands paths (relative to the file system root; a leading
// slash is ignored) into the regular files under them.
func (h *cacheCmdHandler) resolve(ctx context.Context, _ string, req []byte) ([]byte, error) {
	var paths []string
	if err := json.Unmarshal(req, &paths); err != nil {
		return nil, fmt.Errorf("resolve request: %w", err)
	}
	var files []cacheFile
	for _, p := range paths {
		attr, err := h.lookupPath(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if err := h.walk(ctx, path.Clean("/"+p), attr, &files); err != nil {
			return nil, err
		}
	}
	return json.Marshal(files)
}

func (h *cacheCmdHandler) lookupPath(ctx context.Context, p string) (meta.Attr, error) {
	attr, err := h.md.GetAttr(ctx, meta.RootIno)
	if err != nil {
		return meta.Attr{}, err
	}
	for _, name := range strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/") {
		if name == "" {
			continue
		}
		if attr, err = h.md.Lookup(ctx, attr.Ino, name); err != nil {
			return meta.Attr{}, err
		}
	}
	return attr, nil
}

func (h *cacheCmdHandler) walk(ctx context.Context, p string, attr meta.Attr, out *[]cacheFile) error {
	switch attr.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		if len(*out) >= maxResolve {
			return fmt.Errorf("more than %d files", maxResolve)
		}
		*out = append(*out, cacheFile{Path: p, Ino: uint64(attr.Ino), Size: attr.Size})
		return nil
	case syscall.S_IFDIR:
		after := ""
		for {
			ents, err := h.md.ReadDir(ctx, attr.Ino, after, 1024)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if len(ents) == 0 {
				return nil
			}
			for _, e := range ents {
				after = e.Name
				if e.Name == "." || e.Name == ".." {
					continue
				}
				child, err := h.md.GetAttr(ctx, e.Ino)
				if err != nil {
					return fmt.Errorf("%s/%s: %w", p, e.Name, err)
				}
				if err := h.walk(ctx, path.Join(p, e.Name), child, out); err != nil {
					return err
				}
			}
		}
	}
	return nil // symlinks and special files hold no blocks
}

// pages lists a file's pages with their lengths.
func (h *cacheCmdHandler) pages(ctx context.Context, f cacheFile) ([]cache.PageKey, []int, meta.BlockMap, error) {
	bm, err := h.md.Blocks(ctx, meta.Ino(f.Ino))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: block map: %w", f.Path, err)
	}
	ps := pageSizeOf(h.nb)
	idx := make([]uint64, 0, len(bm))
	for i := range bm {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	var keys []cache.PageKey
	var lens []int
	for _, i := range idx {
		ref := bm[i]
		for off, p := 0, uint32(0); off < int(ref.Len); off, p = off+ps, p+1 {
			keys = append(keys, cache.PageKey{Block: uint64(ref.ID), Index: p})
			lens = append(lens, min(ps, int(ref.Len)-off))
		}
	}
	return keys, lens, bm, nil
}

func pageSizeOf(nb *cache.NeighborTier) int { return nb.PageSize() }

func (h *cacheCmdHandler) locate(ctx context.Context, _ string, req []byte) ([]byte, error) {
	var f cacheFile
	if err := json.Unmarshal(req, &f); err != nil {
		return nil, fmt.Errorf("locate request: %w", err)
	}
	keys, lens, _, err := h.pages(ctx, f)
	if err != nil {
		return nil, err
	}
	loc := fileLocation{Path: f.Path, Size: f.Size, Nodes: make(map[string]nodeHoldings)}
	states, errs := h.nb.Locate(ctx, keys)
	owners := h.nb.Owners(keys)
	for id, st := range states {
		var nh nodeHoldings
		for i, s := range st {
			if s.Memory {
				nh.MemoryBytes += uint64(lens[i])
			}
			if s.Disk {
				nh.DiskBytes += uint64(lens[i])
			}
		}
		loc.Nodes[id] = nh
	}
	for i, o := range owners {
		nh := loc.Nodes[o.ID]
		nh.OwnedBytes += uint64(lens[i])
		loc.Nodes[o.ID] = nh
	}
	for id, err := range errs {
		if loc.Errors == nil {
			loc.Errors = make(map[string]string)
		}
		loc.Errors[id] = err.Error()
	}
	return json.Marshal(loc)
}

func (h *cacheCmdHandler) warm(ctx context.Context, _ string, req []byte) ([]byte, error) {
	var f cacheFile
	if err := json.Unmarshal(req, &f); err != nil {
		return nil, fmt.Errorf("warm request: %w", err)
	}
	_, _, bm, err := h.pages(ctx, f)
	if err != nil {
		return nil, err
	}
	var res warmResult
	for _, ref := range bm {
		_, fetched, err := h.nb.WarmBlock(ctx, uint64(ref.ID), int(ref.Len))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Path, err)
		}
		res.Bytes += uint64(ref.Len)
		if fetched {
			res.Fetched++
		}
	}
	return json.Marshal(res)
}

// newCacheCmd returns the `cache` command: locate and warmup.
func newCacheCmd(s streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Show and steer where the cluster caches files",
		Long: `cache talks to a running clustered node (any member, at its --listen address)
over the authenticated node RPC. Paths are file system paths (relative to the
root of the mount; a leading slash is ignored). Each page of a file is owned by
one node (rendezvous hashing over the live nodes); readers on any node find it
there.

locate prints, per file, how many bytes each node holds in memory and on its
NVMe tier and how many it owns. warmup loads files and trees into their owners'
caches, so that a job that reads them next finds them hot: a block whose pages
its owners already hold (in memory or on NVMe) costs no store read and sends no
page; any other block costs one store read, and only its missing pages are sent.

The cluster secret comes from --cluster-secret-file or DATENLORD_CLUSTER_SECRET.`,
		Example: `  # Where is the training set cached?
  datenlord-node cache locate /datasets/imagenet/train-000.tar --addr 127.0.0.1:7071

  # The same as JSON, for a scheduler
  datenlord-node cache locate /datasets/imagenet --addr 127.0.0.1:7071 --json

  # Load a tree into the cluster cache before the job starts
  DATENLORD_CLUSTER_SECRET=s3cret datenlord-node cache warmup /datasets/imagenet --addr 127.0.0.1:7071`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCacheLocateCmd(s), newCacheWarmupCmd(s))
	return cmd
}

// resolveFiles asks the node for the regular files under paths.
func resolveFiles(ctx context.Context, t *tcpfallback.Transport, addr string, paths []string) ([]cacheFile, error) {
	req, err := json.Marshal(paths)
	if err != nil {
		return nil, err
	}
	resp, err := t.Call(ctx, addr, opCacheResolve, req)
	if err != nil {
		return nil, fmt.Errorf("resolve paths at %s: %w", addr, err)
	}
	var files []cacheFile
	if err := json.Unmarshal(resp, &files); err != nil {
		return nil, fmt.Errorf("resolve paths at %s: bad answer: %w", addr, err)
	}
	return files, nil
}

func newCacheLocateCmd(s streams) *cobra.Command {
	var f clusterClientFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "locate PATH...",
		Short: "Show which nodes hold how much of each file in memory and on disk",
		Example: `  datenlord-node cache locate /data/big.bin --addr 127.0.0.1:7071
  datenlord-node cache locate /data --addr 127.0.0.1:7071 --json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, ctx, cancel, err := f.dial(cmd, s)
			if err != nil {
				return err
			}
			defer cancel()
			defer t.Close()
			files, err := resolveFiles(ctx, t, f.addr, args)
			if err != nil {
				return err
			}
			locs := make([]fileLocation, 0, len(files))
			for _, file := range files {
				req, _ := json.Marshal(file)
				resp, err := t.Call(ctx, f.addr, opCacheLocate, req)
				if err != nil {
					return fmt.Errorf("locate %s: %w", file.Path, err)
				}
				var loc fileLocation
				if err := json.Unmarshal(resp, &loc); err != nil {
					return fmt.Errorf("locate %s: bad answer: %w", file.Path, err)
				}
				locs = append(locs, loc)
			}
			if asJSON {
				enc := json.NewEncoder(s.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(locs)
			}
			return printLocations(s.Stdout, locs)
		},
	}
	f.add(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printLocations(w io.Writer, locs []fileLocation) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSIZE\tNODE\tOWNED\tMEMORY\tDISK")
	for _, l := range locs {
		ids := make([]string, 0, len(l.Nodes))
		for id := range l.Nodes {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for i, id := range ids {
			p, size := l.Path, formatSize(int64(l.Size))
			if i > 0 {
				p, size = "", ""
			}
			nh := l.Nodes[id]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p, size, id, formatSize(int64(nh.OwnedBytes)), formatSize(int64(nh.MemoryBytes)), formatSize(int64(nh.DiskBytes)))
		}
		for id, e := range l.Errors {
			fmt.Fprintf(tw, "\t\t%s\t(unreachable: %s)\t\t\n", id, e)
		}
	}
	return tw.Flush()
}

func newCacheWarmupCmd(s streams) *cobra.Command {
	var f clusterClientFlags
	cmd := &cobra.Command{
		Use:     "warmup PATH...",
		Short:   "Load files and trees into their owners' caches",
		Example: `  datenlord-node cache warmup /datasets/train --addr 127.0.0.1:7071 --timeout 1h`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, ctx, cancel, err := f.dial(cmd, s)
			if err != nil {
				return err
			}
			defer cancel()
			defer t.Close()
			files, err := resolveFiles(ctx, t, f.addr, args)
			if err != nil {
				return err
			}
			var total, done uint64
			for _, file := range files {
				total += file.Size
			}
			bar := newProgress(s.Stderr, total)
			fetched := 0
			for _, file := range files {
				req, _ := json.Marshal(file)
				resp, err := t.Call(ctx, f.addr, opCacheWarm, req)
				if err != nil {
					bar.finish()
					return fmt.Errorf("warm up %s: %w", file.Path, err)
				}
				var res warmResult
				if err := json.Unmarshal(resp, &res); err != nil {
					bar.finish()
					return fmt.Errorf("warm up %s: bad answer: %w", file.Path, err)
				}
				done += file.Size
				fetched += res.Fetched
				bar.set(done)
			}
			bar.finish()
			fmt.Fprintf(s.Stdout, "warmed %d files, %s (%d blocks read from the store)\n", len(files), formatSize(int64(total)), fetched)
			return nil
		},
	}
	f.add(cmd.Flags())
	return cmd
}

// progress draws a progress line on a terminal (nothing otherwise).
type progress struct {
	w     io.Writer
	total uint64
	tty   bool
	start time.Time
}

func newProgress(w io.Writer, total uint64) *progress {
	p := &progress{w: w, total: total, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) set(done uint64) {
	if !p.tty {
		return
	}
	const width = 40
	frac := 1.0
	if p.total > 0 {
		frac = float64(done) / float64(p.total)
	}
	n := int(frac * width)
	rate := float64(done) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.w, "\r[%s%s] %3.0f%% %s/%s %s/s ", strings.Repeat("=", n), strings.Repeat(" ", width-n), 100*frac,
		formatSize(int64(done)), formatSize(int64(p.total)), formatSize(int64(rate)))
}

func (p *progress) finish() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}
