package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/rdma"
	"github.com/datenlord/datenlord-go/rdma/rdmaslot"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// neighborRDMA is the neighbor tier's one-sided read path: the device and
// the slot reader over the node transport.
type neighborRDMA struct {
	dev   *rdma.Device
	slots *rdmaslot.Transport
}

// openNeighborRDMA opens RDMA for the neighbor tier as --transport asks:
// tcp never; auto when this node has an RDMA device (otherwise it logs
// that it uses TCP and returns nil); rdma or fail. The device's GID is the
// IPv4-mapped one of the node transport's address when it has one.
func openNeighborRDMA(tr *tcpfallback.Transport, kind string, pageSize int, logger *slog.Logger) (*neighborRDMA, error) {
	if kind != "auto" && kind != "rdma" {
		return nil, nil
	}
	cfg := rdma.Config{}
	if host, _, err := net.SplitHostPort(tr.Addr()); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.To4() != nil && !ip.IsUnspecified() {
			cfg.IP = ip
		}
	}
	dev, err := rdma.Open(cfg)
	if err != nil {
		if kind == "auto" && rdma.Unavailable(err) {
			logger.Info("no RDMA device: the neighbor cache tier uses TCP", "reason", err)
			return nil, nil
		}
		return nil, fmt.Errorf("--transport %s: %w", kind, err)
	}
	slots, err := rdmaslot.New(rdmaslot.Config{Node: tr, Device: dev, SlotBytes: cache.SlotHeaderSize + pageSize, Logger: logger})
	if err != nil {
		dev.Close()
		if kind == "auto" {
			logger.Warn("RDMA set-up failed: the neighbor cache tier uses TCP", "err", err)
			return nil, nil
		}
		return nil, fmt.Errorf("--transport rdma: %w", err)
	}
	logger.Info("RDMA device for neighbor reads", "device", dev.Name(), "gid", dev.GID().String(), "gid_index", dev.GIDIndex(), "mtu", dev.MTU())
	return &neighborRDMA{dev: dev, slots: slots}, nil
}

// serve answers peers' RDMA connect and segment requests from c's arena.
func (r *neighborRDMA) serve(c *cache.Cache) {
	if r != nil {
		r.slots.Serve(c)
	}
}

// close releases the QPs, regions and the device.
func (r *neighborRDMA) close() error {
	if r == nil {
		return nil
	}
	return errors.Join(r.slots.Close(), r.dev.Close())
}
