package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"

	"github.com/datenlord/datenlord-go/meta"
)

// Leases: grants and revocations are Raft commands; expiry is decided by
// the leader alone, from in-memory deadlines. A node that becomes leader
// gives every lease a fresh full TTL (as etcd does), so a lease outlives
// a leader change by up to one TTL but never expires early. Keep-alives
// and time-to-live questions reach the leader: locally, or forwarded over
// the node transport (meta.OpKVLease) from a follower. The leader revokes
// expired leases through Raft, which deletes their keys.

// leaseTick is how often the leader checks deadlines and picks up leases
// granted since.
const leaseTick = 250 * time.Millisecond

// Lease RPC kinds (first byte of an OpKVLease request).
const (
	leaseOpKeepAlive  = 1
	leaseOpTimeToLive = 2
)

type leaseManager struct {
	s *Server

	mu        sync.Mutex
	term      uint64 // the leadership term deadlines belong to (0: none)
	deadlines map[int64]time.Time
	ttls      map[int64]int64
	revoking  map[int64]bool
}

func newLeaseManager(s *Server) *leaseManager {
	return &leaseManager{s: s}
}

// run checks deadlines every leaseTick while the node leads.
func (l *leaseManager) run(ctx context.Context) {
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := l.tick(ctx); err != nil && ctx.Err() == nil {
			l.s.logger.Debug("lease tick", "err", err)
		}
	}
}

// leases reads every lease and its TTL from this node's state.
func (l *leaseManager) leases(ctx context.Context, linearizable bool) (map[int64]int64, error) {
	out := map[int64]int64{}
	err := l.s.svc.ViewKV(ctx, linearizable, func(r meta.KVReader) error {
		return r.Scan([]byte{pLease}, []byte{pLease + 1}, func(k, v []byte) error {
			if len(k) == 9 && len(v) == 8 {
				out[int64(binary.BigEndian.Uint64(k[1:]))] = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		})
	})
	return out, err
}

// sync makes the deadlines current for this node's leadership; it
// returns false when the node does not lead.
func (l *leaseManager) sync(ctx context.Context) (bool, error) {
	if !l.s.svc.IsLeader() {
		l.mu.Lock()
		l.term, l.deadlines, l.ttls = 0, nil, nil
		l.mu.Unlock()
		return false, nil
	}
	term := l.s.svc.Term()
	all, err := l.leases(ctx, false)
	if err != nil {
		return true, err
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != term {
		// A new leadership: every lease gets a fresh TTL.
		l.term, l.deadlines, l.ttls, l.revoking = term, map[int64]time.Time{}, map[int64]int64{}, map[int64]bool{}
	}
	for id, ttl := range all {
		if _, ok := l.deadlines[id]; !ok {
			l.deadlines[id] = now.Add(time.Duration(ttl) * time.Second)
		}
		l.ttls[id] = ttl
	}
	for id := range l.deadlines {
		if _, ok := all[id]; !ok {
			delete(l.deadlines, id)
			delete(l.ttls, id)
			delete(l.revoking, id)
		}
	}
	return true, nil
}

func (l *leaseManager) tick(ctx context.Context) error {
	leads, err := l.sync(ctx)
	if err != nil || !leads {
		return err
	}
	now := time.Now()
	var expired []int64
	l.mu.Lock()
	for id, dl := range l.deadlines {
		if now.After(dl) && !l.revoking[id] {
			l.revoking[id] = true
			expired = append(expired, id)
		}
	}
	l.mu.Unlock()
	for _, id := range expired {
		go func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err := l.s.write(cctx, &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: id}}, &pb.LeaseRevokeResponse{})
			l.mu.Lock()
			delete(l.revoking, id)
			l.mu.Unlock()
			if err != nil && !errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
				l.s.logger.Warn("kv: revoke expired lease", "lease", id, "err", err)
			} else {
				l.s.logger.Debug("kv: lease expired", "lease", id)
			}
		}()
	}
	return nil
}

// local answers a keep-alive or time-to-live on the leader: the TTL left
// and the granted TTL, or syscall.ENOENT for an unknown lease.
func (l *leaseManager) local(ctx context.Context, op byte, id int64) (left, granted int64, err error) {
	leads, err := l.sync(ctx)
	if err != nil {
		return 0, 0, err
	}
	if !leads {
		return 0, 0, errors.New("kv: not the leader")
	}
	l.mu.Lock()
	_, known := l.deadlines[id]
	l.mu.Unlock()
	if !known {
		// Granted since the last look at the state: read it confirmed.
		all, err := l.leases(ctx, true)
		if err != nil {
			return 0, 0, err
		}
		ttl, ok := all[id]
		if !ok {
			return 0, 0, syscall.ENOENT
		}
		l.mu.Lock()
		if _, ok := l.deadlines[id]; !ok && l.deadlines != nil {
			l.deadlines[id] = time.Now().Add(time.Duration(ttl) * time.Second)
			l.ttls[id] = ttl
		}
		l.mu.Unlock()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	dl, ok := l.deadlines[id]
	if !ok || l.revoking[id] {
		return 0, 0, syscall.ENOENT
	}
	ttl := l.ttls[id]
	if op == leaseOpKeepAlive {
		dl = time.Now().Add(time.Duration(ttl) * time.Second)
		l.deadlines[id] = dl
	}
	left = int64((time.Until(dl) + time.Second - 1) / time.Second)
	return max(left, 0), ttl, nil
}

// handle serves OpKVLease from a follower: op u8, id u64 -> left, granted
// i64.
func (l *leaseManager) handle(ctx context.Context, _ string, req []byte) ([]byte, error) {
	if len(req) != 9 || (req[0] != leaseOpKeepAlive && req[0] != leaseOpTimeToLive) {
		return nil, syscall.EINVAL
	}
	left, granted, err := l.local(ctx, req[0], int64(binary.BigEndian.Uint64(req[1:])))
	if err != nil {
		return nil, err
	}
	b := binary.BigEndian.AppendUint64(nil, uint64(left))
	return binary.BigEndian.AppendUint64(b, uint64(granted)), nil
}

// ask answers a keep-alive or time-to-live from the leader, wherever it
// is, retrying through elections until ctx ends.
func (l *leaseManager) ask(ctx context.Context, op byte, id int64) (left, granted int64, err error) {
	for attempt := 0; ; attempt++ {
		left, granted, err = l.askOnce(ctx, op, id)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return left, granted, err
		}
		d := min(10*time.Millisecond<<min(attempt, 5), 300*time.Millisecond)
		select {
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("kv: lease %x: %w (last error: %v)", id, ctx.Err(), err)
		case <-time.After(d):
		}
	}
}

func (l *leaseManager) askOnce(ctx context.Context, op byte, id int64) (int64, int64, error) {
	if l.s.svc.IsLeader() {
		return l.local(ctx, op, id)
	}
	tr := l.s.cfg.Transport
	addr := l.s.svc.LeaderAddr()
	if tr == nil || addr == "" {
		return 0, 0, errors.New("kv: no leader known")
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req := binary.BigEndian.AppendUint64([]byte{op}, uint64(id))
	resp, err := tr.Call(cctx, addr, meta.OpKVLease, req)
	if err != nil {
		return 0, 0, err
	}
	if len(resp) != 16 {
		return 0, 0, fmt.Errorf("kv: lease answer of %d bytes", len(resp))
	}
	return int64(binary.BigEndian.Uint64(resp)), int64(binary.BigEndian.Uint64(resp[8:])), nil
}

// LeaseGrant grants a lease through Raft.
func (s *Server) LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	resp := &pb.LeaseGrantResponse{}
	if err := s.write(ctx, &pb.InternalRaftRequest{LeaseGrant: req}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.fixHeader(resp.Header)
	return resp, nil
}

// LeaseRevoke revokes a lease and deletes its keys through Raft.
func (s *Server) LeaseRevoke(ctx context.Context, req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp := &pb.LeaseRevokeResponse{}
	if err := s.write(ctx, &pb.InternalRaftRequest{LeaseRevoke: req}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.fixHeader(resp.Header)
	return resp, nil
}

// LeaseKeepAlive renews leases for as long as the client streams.
func (s *Server) LeaseKeepAlive(stream grpc.BidiStreamingServer[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(s.base, cancel)
	defer stop()
	reqs := recvAll(ctx, stream.Recv)
	for {
		var req *pb.LeaseKeepAliveRequest
		select {
		case <-ctx.Done():
			return nil
		case r, ok := <-reqs:
			if !ok {
				return nil
			}
			req = r
		}
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		left, _, err := s.leases.ask(actx, leaseOpKeepAlive, req.ID)
		acancel()
		resp := &pb.LeaseKeepAliveResponse{ID: req.ID, TTL: left}
		switch {
		case errors.Is(err, syscall.ENOENT):
			resp.TTL = 0
		case err != nil:
			return toGRPC(err)
		}
		st, _ := s.currentRev(ctx, false)
		resp.Header = s.header(int64(st.rev))
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// LeaseTimeToLive reports a lease's remaining TTL (-1 if unknown).
func (s *Server) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	left, granted, err := s.leases.ask(ctx, leaseOpTimeToLive, req.ID)
	st, _ := s.currentRev(ctx, false)
	resp := &pb.LeaseTimeToLiveResponse{Header: s.header(int64(st.rev)), ID: req.ID, TTL: left, GrantedTTL: granted}
	if errors.Is(err, syscall.ENOENT) {
		resp.TTL = -1
		return resp, nil
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	if req.Keys {
		p := attachPrefix(req.ID)
		err := s.svc.ViewKV(ctx, true, func(r meta.KVReader) error {
			return r.Scan(p, prefixEnd(p), func(k, _ []byte) error {
				resp.Keys = append(resp.Keys, append([]byte(nil), k[len(p):]...))
				return nil
			})
		})
		if err != nil {
			return nil, toGRPC(err)
		}
	}
	return resp, nil
}

// LeaseLeases lists the leases.
func (s *Server) LeaseLeases(ctx context.Context, _ *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	all, err := s.leases.leases(ctx, true)
	if err != nil {
		return nil, toGRPC(err)
	}
	st, _ := s.currentRev(ctx, false)
	resp := &pb.LeaseLeasesResponse{Header: s.header(int64(st.rev))}
	for id := range all {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: id})
	}
	sort.Slice(resp.Leases, func(i, j int) bool { return resp.Leases[i].ID < resp.Leases[j].ID })
	return resp, nil
}
