package meta

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/hashicorp/raft"
)

// Transport is the node transport as the metadata service uses it: RPCs
// by op code and raw authenticated streams, all on one port.
// *tcpfallback.Transport satisfies it.
type Transport interface {
	// Handle registers the handler of requests with op; peer is the
	// caller's node id and req is valid only during the call.
	Handle(op uint16, h func(ctx context.Context, peer string, req []byte) ([]byte, error))
	// Call sends a request to the node at addr and waits for its answer
	// until ctx ends. A handler's syscall.Errno arrives as an error that
	// errors.Is the errno.
	Call(ctx context.Context, addr string, op uint16, req []byte) ([]byte, error)
	// ListenStream accepts incoming raw streams of one kind.
	ListenStream(kind string) (net.Listener, error)
	// DialStream opens a raw stream of one kind to addr.
	DialStream(ctx context.Context, kind, addr string) (net.Conn, error)
	// Addr is the address peers reach this node at.
	Addr() string
}

// Caller is the part of Transport that a client of the cluster RPCs
// (the cluster command) needs.
type Caller interface {
	Call(ctx context.Context, addr string, op uint16, req []byte) ([]byte, error)
}

// RPC op codes of the metadata service (range 0x0100-0x01ff).
const (
	// OpForward carries an encoded command to the leader; the answer is
	// the encoded result.
	OpForward uint16 = 0x0101
	// OpReadIndex asks the leader for a confirmed commit index (u64).
	OpReadIndex uint16 = 0x0102
	// OpAddMember asks a member to add a node (forwarded to the leader).
	OpAddMember uint16 = 0x0103
	// OpRemoveMember asks a member to remove a node (forwarded).
	OpRemoveMember uint16 = 0x0104
	// OpStatus returns ClusterStatus as JSON.
	OpStatus uint16 = 0x0105
	// OpNodeInfo returns this node's own view (NodeInfo, JSON).
	OpNodeInfo uint16 = 0x0106
	// OpPins returns this node's garbage collection pins (NodePins, JSON).
	OpPins uint16 = 0x0107
	// OpIsOpen asks whether an inode is open on this node (u64 in, one
	// byte out).
	OpIsOpen uint16 = 0x0108
)

// raftStreamKind is the stream kind Raft runs over.
const raftStreamKind = "raft"

// errNotLeader is what a node answers forwarded work when it is not the
// leader (any more); the caller finds the new leader and retries.
var errNotLeader = errors.New("meta: not the leader")

// errNoLeader means no leader is known at the moment (an election).
var errNoLeader = errors.New("meta: no leader known")

// streamLayer adapts the transport's "raft" streams to raft.StreamLayer,
// so Raft shares the node port and the Raft address is the node address.
type streamLayer struct {
	net.Listener
	t Transport
}

// Dial opens a Raft stream to a server.
func (l *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.t.DialStream(ctx, raftStreamKind, string(addr))
}

func (s *Service) newClusterTransport() (*raft.NetworkTransport, error) {
	ln, err := s.cfg.Transport.ListenStream(raftStreamKind)
	if err != nil {
		return nil, fmt.Errorf("meta: listen for raft streams: %w", err)
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &streamLayer{Listener: ln, t: s.cfg.Transport},
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  newRaftLogger(s.cfg.Logger),
	}), nil
}

// bootstrapConfiguration is the initial configuration of a node with no
// Raft state: all Peers as voters, or this node alone.
func (s *Service) bootstrapConfiguration() (raft.Configuration, error) {
	self := raft.ServerAddress(s.trans.LocalAddr())
	if len(s.cfg.Peers) == 0 {
		return raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: raft.ServerID(s.cfg.NodeID), Address: self,
		}}}, nil
	}
	addr, ok := s.cfg.Peers[s.cfg.NodeID]
	if !ok {
		return raft.Configuration{}, fmt.Errorf("meta: node id %q is not among the peers", s.cfg.NodeID)
	}
	if addr != string(self) {
		s.logger.Warn("this node's peer address differs from its transport address",
			"peer_addr", addr, "transport_addr", self)
	}
	var conf raft.Configuration
	for id, a := range s.cfg.Peers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(a)})
	}
	sort.Slice(conf.Servers, func(i, j int) bool { return conf.Servers[i].ID < conf.Servers[j].ID })
	return conf, nil
}

// startCluster finishes Open for a clustered node: it registers the RPC
// handlers, joins if asked, and waits until a linearizable read works.
func (s *Service) startCluster(ctx context.Context, joining bool) error {
	t := s.cfg.Transport
	t.Handle(OpForward, s.handleForward)
	t.Handle(OpReadIndex, s.handleReadIndex)
	t.Handle(OpAddMember, s.handleAddMember)
	t.Handle(OpRemoveMember, s.handleRemoveMember)
	t.Handle(OpStatus, s.handleStatus)
	t.Handle(OpNodeInfo, s.handleNodeInfo)
	t.Handle(OpPins, s.handlePins)
	t.Handle(OpIsOpen, s.handleIsOpen)
	s.watchLeader()
	if joining {
		if err := s.join(ctx); err != nil {
			return err
		}
	}
	// The first linearizable read waits for a leader, which commits the
	// namespace bootstrap (idempotent) before it serves reads.
	for attempt := 0; ; attempt++ {
		cnt, err := s.counters(ctx)
		if err == nil && cnt.BlockSize != 0 {
			if want := s.cfg.BlockSize; want != 0 && uint64(want) != cnt.BlockSize {
				return fmt.Errorf("meta: the cluster was formatted with block size %d, not %d", cnt.BlockSize, want)
			}
			s.blockSize = uint32(cnt.BlockSize)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("meta: wait for the cluster: %w (last error: %v)", ctx.Err(), err)
		}
		if err := s.backoff(ctx, attempt); err != nil {
			return fmt.Errorf("meta: wait for the cluster: %w", err)
		}
	}
}

// memberRequest is the body of OpAddMember and OpRemoveMember.
type memberRequest struct {
	ID    string `json:"id"`
	Addr  string `json:"addr,omitempty"`
	Voter bool   `json:"voter,omitempty"`
}

func (s *Service) join(ctx context.Context) error {
	req, _ := json.Marshal(memberRequest{ID: s.cfg.NodeID, Addr: s.cfg.Transport.Addr(), Voter: s.cfg.Voter})
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, s.attemptTimeout())
		_, err := s.cfg.Transport.Call(cctx, s.cfg.Join, OpAddMember, req)
		cancel()
		if err == nil {
			s.logger.Info("joined the cluster", "via", s.cfg.Join, "voter", s.cfg.Voter)
			return nil
		}
		s.logger.Info("join: retrying", "via", s.cfg.Join, "err", err)
		if berr := s.backoff(ctx, attempt); berr != nil {
			return fmt.Errorf("meta: join via %s: %w (last error: %v)", s.cfg.Join, berr, err)
		}
	}
}

// watchLeader keeps leaderChanged current: it is closed and replaced
// whenever this node sees the leader change (or become unknown), so that
// RPCs to a leader that is gone are abandoned at once rather than at
// their timeout (a partitioned leader drops packets, it does not refuse).
func (s *Service) watchLeader() {
	s.leaderMu.Lock()
	s.leaderChanged = make(chan struct{})
	s.leaderMu.Unlock()
	obs := make(chan raft.Observation, 16)
	s.raft.RegisterObserver(raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	}))
	go func() {
		for {
			select {
			case <-s.base.Done():
				return
			case <-obs:
				s.leaderMu.Lock()
				close(s.leaderChanged)
				s.leaderChanged = make(chan struct{})
				s.leaderMu.Unlock()
			}
		}
	}()
}

// attemptContext bounds one RPC attempt to the leader: by attemptTimeout,
// and by the next leader change.
func (s *Service) attemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	s.leaderMu.Lock()
	changed := s.leaderChanged
	s.leaderMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.attemptTimeout())
	if changed != nil {
		go func() {
			select {
			case <-changed:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	return ctx, cancel
}

// attemptTimeout bounds one RPC attempt; a retry follows.
func (s *Service) attemptTimeout() time.Duration { return 2*s.cfg.ElectionTimeout + 3*time.Second }

// retryContext bounds ctx by RetryTimeout and by Close.
func (s *Service) retryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RetryTimeout)
	stop := context.AfterFunc(s.base, cancel)
	return ctx, func() { stop(); cancel() }
}

// backoff sleeps before retry attempt n (5ms doubling to 200ms), or
// returns ctx's error.
func (s *Service) backoff(ctx context.Context, n int) error {
	d := 5 * time.Millisecond << min(n, 6)
	d = min(d, 200*time.Millisecond)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.base.Done():
		return ErrClosed
	case <-t.C:
		return nil
	}
}

// leaderAddr returns the current leader's address, or "".
func (s *Service) leaderAddr() string {
	addr, _ := s.raft.LeaderWithID()
	return string(addr)
}

// applyCluster proposes an encoded command: on the leader through Raft,
// elsewhere forwarded to the leader, retrying through elections until the
// outcome is known. Retries are safe because the command carries an id
// (see dedup.go).
func (s *Service) applyCluster(ctx context.Context, data []byte) (*applyResult, error) {
	ctx, cancel := s.retryContext(ctx)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		res, err := s.applyOnce(ctx, data)
		if err == nil {
			return res, res.err
		}
		if errors.Is(err, ErrClosed) {
			return nil, err
		}
		last = err
		if err := s.backoff(ctx, attempt); err != nil {
			return nil, fmt.Errorf("meta: apply: no leader committed the command: %w (last error: %v)", err, last)
		}
	}
}

// applyOnce makes one attempt; an error means the outcome is unknown or
// the command was not proposed, and a retry is in order.
func (s *Service) applyOnce(ctx context.Context, data []byte) (*applyResult, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	if s.raft.State() == raft.Leader {
		defer s.mu.RUnlock()
		return s.applyLocal(ctx, data)
	}
	addr := s.leaderAddr()
	s.mu.RUnlock()
	if addr == "" {
		return nil, errNoLeader
	}
	cctx, cancel := s.attemptContext(ctx)
	defer cancel()
	resp, err := s.cfg.Transport.Call(cctx, addr, OpForward, data)
	if err != nil {
		return nil, fmt.Errorf("meta: forward to %s: %w", addr, err)
	}
	return decodeResult(resp)
}

// applyLocal proposes data through this node's Raft (it must lead).
func (s *Service) applyLocal(ctx context.Context, data []byte) (*applyResult, error) {
	f := s.raft.Apply(data, timeoutOf(ctx))
	if err := wait(ctx, f); err != nil {
		return nil, fmt.Errorf("meta: apply: %w", err)
	}
	res, ok := f.Response().(*applyResult)
	if !ok || res == nil {
		return nil, fmt.Errorf("meta: apply: unexpected response %T", f.Response())
	}
	return res, nil
}

func (s *Service) handleForward(ctx context.Context, peer string, req []byte) ([]byte, error) {
	ctx, cancel := s.retryContext(ctx) // Close must not wait for it
	defer cancel()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.raft.State() != raft.Leader {
		return nil, errNotLeader
	}
	res, err := s.applyLocal(ctx, bytes.Clone(req))
	if err != nil {
		return nil, err
	}
	return encodeResult(res)
}

// linearize waits until the local state machine reflects every write
// acknowledged before the call (ReadIndex): the leader confirms it still
// leads, and this node waits until it applied the leader's commit index.
func (s *Service) linearize(ctx context.Context) error {
	ctx, cancel := s.retryContext(ctx)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		idx, err := s.readIndex(ctx)
		if err == nil {
			return s.waitApplied(ctx, idx)
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		last = err
		if err := s.backoff(ctx, attempt); err != nil {
			return fmt.Errorf("meta: linearizable read: no leader confirmed: %w (last error: %v)", err, last)
		}
	}
}

func (s *Service) readIndex(ctx context.Context) (uint64, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return 0, ErrClosed
	}
	if s.raft.State() == raft.Leader {
		defer s.mu.RUnlock()
		return s.leaderReadIndex(ctx)
	}
	s.mu.RUnlock()
	return s.followerReadIndex(ctx)
}

// readBatch is one OpReadIndex request shared by the reads that joined it
// before it was sent.
type readBatch struct {
	done chan struct{}
	idx  uint64
	err  error
}

// followerReadIndex asks the leader for a read index. Concurrent reads
// share requests: a read joins the next request to be sent (never one
// already in flight, which may have been answered before the read began),
// so at most one request is in flight and one filling per node.
func (s *Service) followerReadIndex(ctx context.Context) (uint64, error) {
	s.rbMu.Lock()
	b := s.rbNext
	if b == nil {
		b = &readBatch{done: make(chan struct{})}
		s.rbNext = b
	}
	if !s.rbSending {
		s.rbSending = true
		s.rbNext = nil
		go s.sendReadBatches(b)
	}
	s.rbMu.Unlock()
	select {
	case <-b.done:
		return b.idx, b.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// sendReadBatches sends b, then every batch that filled meanwhile.
func (s *Service) sendReadBatches(b *readBatch) {
	for {
		b.idx, b.err = s.callReadIndex()
		close(b.done)
		s.rbMu.Lock()
		b = s.rbNext
		s.rbNext = nil
		if b == nil {
			s.rbSending = false
			s.rbMu.Unlock()
			return
		}
		s.rbMu.Unlock()
	}
}

func (s *Service) callReadIndex() (uint64, error) {
	addr := s.leaderAddr()
	if addr == "" {
		return 0, errNoLeader
	}
	ctx, cancel := s.attemptContext(s.base)
	defer cancel()
	resp, err := s.cfg.Transport.Call(ctx, addr, OpReadIndex, nil)
	if err != nil {
		return 0, fmt.Errorf("meta: read index from %s: %w", addr, err)
	}
	if len(resp) != 8 {
		return 0, fmt.Errorf("meta: read index from %s: %d bytes", addr, len(resp))
	}
	return binary.BigEndian.Uint64(resp), nil
}

// leaderReadIndex returns the commit index once leadership is confirmed
// by a quorum. A new leader first commits a marker command of its own
// term (ensureReady): until then its commit index may lag entries that
// the previous leader committed.
func (s *Service) leaderReadIndex(ctx context.Context) (uint64, error) {
	if err := s.ensureReady(ctx); err != nil {
		return 0, err
	}
	idx := s.raft.CommitIndex()
	if err := wait(ctx, s.raft.VerifyLeader()); err != nil {
		return 0, fmt.Errorf("meta: verify leadership: %w", err)
	}
	return idx, nil
}

// ensureReady commits, once per leadership term, an idempotent bootstrap
// command: it creates the namespace the first time and proves that the
// commit index covers everything earlier leaders committed.
func (s *Service) ensureReady(ctx context.Context) error {
	term := s.raft.CurrentTerm()
	if s.readyTerm.Load() == term {
		return nil
	}
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if s.readyTerm.Load() == term {
		return nil
	}
	bs := s.cfg.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	data, err := encodeCommand(&command{Op: opBootstrap, IfNew: true, BlockSize: bs, Now: time.Now().UnixNano()})
	if err != nil {
		return err
	}
	res, err := s.applyLocal(ctx, data)
	if err != nil {
		return err
	}
	if res.err != nil {
		s.logger.Error("meta: namespace bootstrap by the new leader failed", "err", res.err)
	}
	s.readyTerm.Store(term)
	return nil
}

func (s *Service) handleReadIndex(ctx context.Context, peer string, req []byte) ([]byte, error) {
	ctx, cancel := s.retryContext(ctx) // Close must not wait for it
	defer cancel()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.raft.State() != raft.Leader {
		return nil, errNotLeader
	}
	idx, err := s.leaderReadIndex(ctx)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(nil, idx), nil
}

// waitApplied waits until the state machine has seen index idx.
//
// Entries that never reach the state machine (Raft's no-op at the start
// of a term) are covered by the ready marker; a snapshot install can
// leave seen below the snapshot's index, so Raft's own applied index is
// consulted as well once it has stayed at or past idx for two polls.
func (s *Service) waitApplied(ctx context.Context, idx uint64) error {
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	raftAhead := 0
	for {
		if s.fsm.seen.Load() >= idx {
			return nil
		}
		ch := s.fsm.advanced()
		if s.fsm.seen.Load() >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-poll.C:
			if s.raft.AppliedIndex() >= idx {
				if raftAhead++; raftAhead >= 2 {
					return nil
				}
			}
		case <-ctx.Done():
			return fmt.Errorf("meta: wait for index %d (applied %d): %w", idx, s.fsm.seen.Load(), ctx.Err())
		}
	}
}
