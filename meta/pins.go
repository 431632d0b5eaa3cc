package meta

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// LocalPins is what the file system on this node still uses: the oldest
// block map an open file loaded, the blocks of flushes in progress, and
// the inodes it has open. *fs.FS satisfies it. The service answers other
// nodes' questions about them (OpPins, OpIsOpen).
type LocalPins interface {
	// OldestOpenIndex is the smallest applied index at which an open file
	// loaded its block map; false when nothing is open.
	OldestOpenIndex() (uint64, bool)
	// InFlightBlocks calls fn for every block handed to a flush whose
	// commit has not finished.
	InFlightBlocks(fn func(BlockID))
	// IsOpen reports whether ino is open on this node.
	IsOpen(ino Ino) bool
}

// NodePins are the garbage collection pins of one node, or of the whole
// cluster combined (the minimum open index, the union of blocks).
type NodePins struct {
	OldestOpen uint64    `json:"oldest_open,omitempty"`
	HasOpen    bool      `json:"has_open,omitempty"`
	InFlight   []BlockID `json:"in_flight,omitempty"`
}

func (p *NodePins) merge(o NodePins) {
	if o.HasOpen && (!p.HasOpen || o.OldestOpen < p.OldestOpen) {
		p.OldestOpen, p.HasOpen = o.OldestOpen, true
	}
	p.InFlight = append(p.InFlight, o.InFlight...)
}

// pinsHolder lets SetLocalPins swap the pins atomically.
type pinsHolder struct{ p LocalPins }

// SetLocalPins tells the service what this node's file system pins
// (nil: nothing). Call it once the file system is up.
func (s *Service) SetLocalPins(p LocalPins) { s.pins.Store(&pinsHolder{p: p}) }

func (s *Service) localPins() NodePins {
	h := s.pins.Load()
	if h == nil || h.p == nil {
		return NodePins{}
	}
	var np NodePins
	np.OldestOpen, np.HasOpen = h.p.OldestOpenIndex()
	h.p.InFlightBlocks(func(id BlockID) { np.InFlight = append(np.InFlight, id) })
	return np
}

func (s *Service) localIsOpen(ino Ino) bool {
	h := s.pins.Load()
	return h != nil && h.p != nil && h.p.IsOpen(ino)
}

// IsLeader reports whether this node leads the cluster (a single node
// always does once open).
func (s *Service) IsLeader() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closed && s.raft.State() == raft.Leader
}

// ClusterPins combines the pins of every member: this node's from
// SetLocalPins, the others' over RPC. A member that does not answer fails
// the call, so that a garbage collection pass never deletes what it
// cannot prove unused.
func (s *Service) ClusterPins(ctx context.Context) (NodePins, error) {
	all := s.localPins()
	if !s.cfg.clustered() {
		return all, nil
	}
	replies, err := s.askMembers(ctx, OpPins, nil)
	if err != nil {
		return NodePins{}, err
	}
	for id, resp := range replies {
		var np NodePins
		if err := json.Unmarshal(resp, &np); err != nil {
			return NodePins{}, fmt.Errorf("meta: pins of %s: %w", id, err)
		}
		all.merge(np)
	}
	return all, nil
}

// openAnywhere reports whether ino is open on any member. A member that
// cannot be asked counts as an error.
func (s *Service) openAnywhere(ctx context.Context, ino Ino) (bool, error) {
	if s.localIsOpen(ino) {
		return true, nil
	}
	if !s.cfg.clustered() {
		return false, nil
	}
	replies, err := s.askMembers(ctx, OpIsOpen, binary.BigEndian.AppendUint64(nil, uint64(ino)))
	if err != nil {
		return false, err
	}
	for _, r := range replies {
		if len(r) == 1 && r[0] == 1 {
			return true, nil
		}
	}
	return false, nil
}

// askMembers calls op on every other member of the configuration and
// returns the answers by node id; any failure fails the whole call.
func (s *Service) askMembers(ctx context.Context, op uint16, req []byte) (map[string][]byte, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	f := s.raft.GetConfiguration()
	s.mu.RUnlock()
	if err := wait(ctx, f); err != nil {
		return nil, fmt.Errorf("meta: read configuration: %w", err)
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		out  = map[string][]byte{}
		errs []error
	)
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.cfg.NodeID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := s.cfg.Transport.Call(cctx, string(srv.Address), op, req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("meta: ask %s: %w", srv.ID, err))
				return
			}
			out[string(srv.ID)] = resp
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Service) handlePins(ctx context.Context, peer string, req []byte) ([]byte, error) {
	return json.Marshal(s.localPins())
}

func (s *Service) handleIsOpen(ctx context.Context, peer string, req []byte) ([]byte, error) {
	ino, err := beIno(req)
	if err != nil {
		return nil, err
	}
	if s.localIsOpen(ino) {
		return []byte{1}, nil
	}
	return []byte{0}, nil
}
