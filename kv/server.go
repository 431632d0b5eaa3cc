package kv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/datenlord/datenlord-go/internal/clientauth"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server.
type Config struct {
	// Meta is the metadata service whose Config.KV is Machine.
	Meta *meta.Service
	// Machine is the KV machine configured in Meta (meta.Config.KV).
	Machine *Machine
	// Transport is the node transport (nil on a single node): lease
	// keep-alives on a follower are forwarded to the leader over it.
	Transport meta.Transport
	// Credentials, when set, make the server require etcd authentication
	// with an access key as user name and its secret as password.
	Credentials *clientauth.Credentials
	// TLS, when set, serves TLS.
	TLS *tls.Config
	// Registerer receives the metrics (nil: none).
	Registerer prometheus.Registerer
	// Logger receives logs (nil: slog.Default()).
	Logger *slog.Logger
	// TokenTTL is how long an auth token is valid (0: 10 minutes).
	TokenTTL time.Duration
	// ProgressInterval is how often a watch that asked for progress
	// notifications gets one when idle (0: 10 minutes, as etcd).
	ProgressInterval time.Duration
}

// Server serves etcd's v3 gRPC API (KV, Watch, Lease, Auth.Authenticate,
// Cluster.MemberList, Maintenance.Status) from the KV machine.
type Server struct {
	pb.UnimplementedKVServer
	pb.UnimplementedWatchServer
	pb.UnimplementedLeaseServer

	cfg       Config
	svc       *meta.Service
	m         *Machine
	logger    *slog.Logger
	memberID  uint64
	clusterID uint64
	auth      *authenticator // nil: open
	leases    *leaseManager
	metrics   *metrics

	grpc   *grpc.Server
	lis    net.Listener
	addr   string
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// idOf hashes a name to a non-zero 64-bit id.
func idOf(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

// New returns a server; Serve starts it.
func New(cfg Config) (*Server, error) {
	if cfg.Meta == nil || cfg.Machine == nil {
		return nil, errors.New("kv: Config.Meta and Config.Machine are required")
	}
	if cfg.Meta.KVMachine() != meta.KVMachine(cfg.Machine) {
		return nil, errors.New("kv: Config.Machine is not the meta service's KV machine")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 10 * time.Minute
	}
	if cfg.ProgressInterval == 0 {
		cfg.ProgressInterval = 10 * time.Minute
	}
	s := &Server{cfg: cfg, svc: cfg.Meta, m: cfg.Machine, logger: cfg.Logger.With("component", "kv"),
		memberID: idOf(cfg.Meta.NodeID()), clusterID: idOf("datenlord-kv")}
	s.base, s.cancel = context.WithCancel(context.Background())
	if cfg.Credentials != nil {
		s.auth = newAuthenticator(cfg.Credentials, cfg.TokenTTL)
	}
	var err error
	if s.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	s.leases = newLeaseManager(s)
	if cfg.Transport != nil {
		cfg.Transport.Handle(meta.OpKVLease, s.leases.handle)
	}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
		grpc.MaxRecvMsgSize(4 << 20),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	s.grpc = grpc.NewServer(opts...)
	pb.RegisterKVServer(s.grpc, s)
	pb.RegisterWatchServer(s.grpc, s)
	pb.RegisterLeaseServer(s.grpc, s)
	pb.RegisterAuthServer(s.grpc, &authServer{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterServer{s: s})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceServer{s: s})
	return s, nil
}

// Serve listens on addr and serves in the background until Stop.
func (s *Server) Serve(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("kv: listen on %s: %w", addr, err)
	}
	s.lis = lis
	s.addr = lis.Addr().String()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.grpc.Serve(lis); err != nil {
			s.logger.Error("kv: serve", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		s.leases.run(s.base)
	}()
	s.logger.Info("KV server listening", "addr", s.addr, "tls", s.cfg.TLS != nil, "auth", s.auth != nil)
	return nil
}

// Addr is the address the server listens on (after Serve).
func (s *Server) Addr() string { return s.addr }

// Stop ends the watches and lease streams, lets running requests finish
// (for up to 5 s) and stops the server.
func (s *Server) Stop() error {
	s.cancel()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.grpc.Stop()
		<-done
	}
	s.wg.Wait()
	return nil
}

// header returns a response header at revision rev.
func (s *Server) header(rev int64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.memberID, Revision: rev, RaftTerm: s.svc.Term()}
}

// fixHeader fills the member fields of a header from the state machine.
func (s *Server) fixHeader(h *pb.ResponseHeader) *pb.ResponseHeader {
	if h == nil {
		h = &pb.ResponseHeader{}
	}
	h.ClusterId, h.MemberId, h.RaftTerm = s.clusterID, s.memberID, s.svc.Term()
	return h
}

// toGRPC turns an error of the meta service into a gRPC status.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return rpctypes.ErrGRPCCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, meta.ErrClosed):
		return rpctypes.ErrGRPCStopped
	}
	return status.Error(codes.Unavailable, err.Error())
}

// write proposes a request through Raft and decodes its response.
func (s *Server) write(ctx context.Context, r *pb.InternalRaftRequest, resp proto.Message) error {
	req, err := proto.Marshal(r)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := s.svc.ApplyKV(ctx, req)
	if err != nil {
		return toGRPC(err)
	}
	return toGRPC(decodeResponse(out, resp))
}

// Range reads keys; linearizable unless the request is serializable.
func (s *Server) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	var resp *pb.RangeResponse
	err := s.svc.ViewKV(ctx, !req.Serializable, func(r meta.KVReader) error {
		st, err := loadState(r)
		if err != nil {
			return err
		}
		resp, err = rangeKVs(r, st, req)
		return err
	})
	var ke *kvError
	if errors.As(err, &ke) {
		return nil, ke.code.grpc()
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	resp.Header = s.fixHeader(resp.Header)
	return resp, nil
}

// Put writes a key.
func (s *Server) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if len(req.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	resp := &pb.PutResponse{}
	if err := s.write(ctx, &pb.InternalRaftRequest{Put: req}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.fixHeader(resp.Header)
	return resp, nil
}

// DeleteRange deletes keys.
func (s *Server) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if len(req.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	resp := &pb.DeleteRangeResponse{}
	if err := s.write(ctx, &pb.InternalRaftRequest{DeleteRange: req}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.fixHeader(resp.Header)
	return resp, nil
}

// Txn runs a transaction through Raft.
func (s *Server) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(req, 0, new(int)); err != nil {
		var ke *kvError
		if errors.As(err, &ke) {
			return nil, ke.code.grpc()
		}
		return nil, err
	}
	if readOnlyTxn(req) {
		return s.readTxn(ctx, req)
	}
	resp := &pb.TxnResponse{}
	if err := s.write(ctx, &pb.InternalRaftRequest{Txn: req}, resp); err != nil {
		return nil, err
	}
	s.fixTxnHeaders(resp)
	return resp, nil
}

// readTxn evaluates a Txn that only reads (readOnlyTxn) on this node's
// state, like Range: after a ReadIndex unless every Range in it is
// serializable. It does not go through Raft.
func (s *Server) readTxn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	var resp *pb.TxnResponse
	err := s.svc.ViewKV(ctx, !serializableTxn(req), func(r meta.KVReader) error {
		st, err := loadState(r)
		if err != nil {
			return err
		}
		ro := &roTxn{KVReader: r}
		a := &applier{tx: ro, st: st}
		if resp, err = a.txn(req); err != nil {
			return err
		}
		if ro.wrote {
			return errors.New("kv: a read-only Txn tried to write")
		}
		setHeaderRev(resp, int64(st.rev))
		return nil
	})
	var ke *kvError
	if errors.As(err, &ke) {
		return nil, ke.code.grpc()
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	s.fixTxnHeaders(resp)
	return resp, nil
}

func (s *Server) fixTxnHeaders(resp *pb.TxnResponse) {
	resp.Header = s.fixHeader(resp.Header)
	for _, op := range resp.Responses {
		switch x := op.Response.(type) {
		case *pb.ResponseOp_ResponsePut:
			x.ResponsePut.Header = s.fixHeader(x.ResponsePut.Header)
		case *pb.ResponseOp_ResponseDeleteRange:
			x.ResponseDeleteRange.Header = s.fixHeader(x.ResponseDeleteRange.Header)
		case *pb.ResponseOp_ResponseRange:
			x.ResponseRange.Header = s.fixHeader(x.ResponseRange.Header)
		case *pb.ResponseOp_ResponseTxn:
			s.fixTxnHeaders(x.ResponseTxn)
		}
	}
}

// Compact drops the event history up to a revision (watches and reads
// at earlier revisions answer ErrCompacted).
func (s *Server) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	resp := &pb.CompactionResponse{}
	if err := s.write(ctx, &pb.InternalRaftRequest{Compaction: req}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.fixHeader(resp.Header)
	return resp, nil
}

// currentRev reads this node's current and compacted revisions.
func (s *Server) currentRev(ctx context.Context, linearizable bool) (state, error) {
	var st state
	err := s.svc.ViewKV(ctx, linearizable, func(r meta.KVReader) error {
		var err error
		st, err = loadState(r)
		return err
	})
	return st, err
}

// clusterServer answers MemberList with this member (its KV address as
// client URL) so that etcdctl member list and client sync work.
type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (c *clusterServer) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	scheme := "http://"
	if c.s.cfg.TLS != nil {
		scheme = "https://"
	}
	st, err := c.s.currentRev(ctx, false)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.MemberListResponse{Header: c.s.header(int64(st.rev)), Members: []*pb.Member{{
		ID: c.s.memberID, Name: c.s.svc.NodeID(), ClientURLs: []string{scheme + c.s.addr},
	}}}, nil
}

// maintenanceServer answers Status (etcdctl endpoint status).
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

func (m *maintenanceServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st, err := m.s.currentRev(ctx, false)
	if err != nil {
		return nil, toGRPC(err)
	}
	var leader uint64
	if id := m.s.svc.LeaderID(); id != "" {
		leader = idOf(id)
	}
	idx := m.s.svc.AppliedIndex()
	return &pb.StatusResponse{Header: m.s.header(int64(st.rev)), Version: "3.5.0", Leader: leader,
		RaftIndex: idx, RaftAppliedIndex: idx, RaftTerm: m.s.svc.Term()}, nil
}
