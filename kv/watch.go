package kv

import (
	"context"
	"errors"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"

	"github.com/datenlord/datenlord-go/meta"
)

// Watches pull: every watcher reads the event log of this node's state
// (a follower's too: followers apply every command) from its next
// revision, sends what matches, and waits for the next commit
// (Machine.Changed). Apply never waits for a watcher; a watcher that falls
// behind the retained history is canceled with the compacted revision,
// as etcd does, and the client resumes or reports ErrCompacted.

// watchBatch bounds the events one read of the log returns.
const watchBatch = 1000

// watchStream is one Watch RPC: its watchers share the stream's sender.
type watchStream struct {
	s      *Server
	stream grpc.BidiStreamingServer[pb.WatchRequest, pb.WatchResponse]
	ctx    context.Context

	sendMu sync.Mutex
	mu     sync.Mutex
	nextID int64
	active map[int64]context.CancelFunc
	wg     sync.WaitGroup
}

func (w *watchStream) send(r *pb.WatchResponse) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	return w.stream.Send(r)
}

// Watch serves a watch stream: create, cancel and progress requests.
func (s *Server) Watch(stream grpc.BidiStreamingServer[pb.WatchRequest, pb.WatchResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(s.base, cancel)
	defer stop()
	w := &watchStream{s: s, stream: stream, ctx: ctx, active: map[int64]context.CancelFunc{}}
	defer w.wg.Wait()
	defer cancel()
	reqs := recvAll(ctx, stream.Recv)
	for {
		var req *pb.WatchRequest
		select {
		case <-ctx.Done():
			return nil // the server stops
		case r, ok := <-reqs:
			if !ok {
				return nil // the client closed the stream
			}
			req = r
		}
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			if r.CreateRequest == nil {
				continue
			}
			if err := w.create(r.CreateRequest); err != nil {
				return err
			}
		case *pb.WatchRequest_CancelRequest:
			if r.CancelRequest == nil {
				continue
			}
			id := r.CancelRequest.WatchId
			w.mu.Lock()
			c, ok := w.active[id]
			delete(w.active, id)
			w.mu.Unlock()
			if ok {
				c()
				st, _ := s.currentRev(ctx, false)
				if err := w.send(&pb.WatchResponse{Header: s.header(int64(st.rev)), WatchId: id, Canceled: true}); err != nil {
					return err
				}
			}
		case *pb.WatchRequest_ProgressRequest:
			st, err := s.currentRev(ctx, false)
			if err != nil {
				return toGRPC(err)
			}
			if err := w.send(&pb.WatchResponse{Header: s.header(int64(st.rev)), WatchId: -1}); err != nil {
				return err
			}
		}
	}
}

func (w *watchStream) create(cr *pb.WatchCreateRequest) error {
	s := w.s
	st, err := s.currentRev(w.ctx, false)
	if err != nil {
		return toGRPC(err)
	}
	w.mu.Lock()
	id := cr.WatchId
	if id == 0 {
		for w.active[w.nextID] != nil {
			w.nextID++
		}
		id = w.nextID
		w.nextID++
	}
	if _, dup := w.active[id]; dup || len(cr.Key) == 0 {
		w.mu.Unlock()
		return w.send(&pb.WatchResponse{Header: s.header(int64(st.rev)), WatchId: id, Created: true, Canceled: true,
			CancelReason: "etcdserver: invalid watch request (empty key or duplicate watch id)"})
	}
	wctx, cancel := context.WithCancel(w.ctx)
	w.active[id] = cancel
	w.mu.Unlock()
	if err := w.send(&pb.WatchResponse{Header: s.header(int64(st.rev)), WatchId: id, Created: true}); err != nil {
		cancel()
		return err
	}
	next := uint64(cr.StartRevision)
	if cr.StartRevision <= 0 {
		next = st.rev + 1
	}
	var noPut, noDelete bool
	for _, f := range cr.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			noPut = true
		case pb.WatchCreateRequest_NODELETE:
			noDelete = true
		}
	}
	s.metrics.watchers.Inc()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer s.metrics.watchers.Dec()
		defer cancel()
		err := w.run(wctx, id, cr, next, noPut, noDelete)
		if err != nil && wctx.Err() == nil {
			s.logger.Debug("watch ended", "id", id, "err", err)
		}
		w.mu.Lock()
		if w.active[id] != nil && wctx.Err() == nil {
			delete(w.active, id)
		}
		w.mu.Unlock()
	}()
	return nil
}

var errWatchCanceled = errors.New("kv: watch canceled")

// run sends the events of one watcher from revision next on.
func (w *watchStream) run(ctx context.Context, id int64, cr *pb.WatchCreateRequest, next uint64, noPut, noDelete bool) error {
	s := w.s
	var progress <-chan time.Time
	if cr.ProgressNotify {
		t := time.NewTicker(s.cfg.ProgressInterval)
		defer t.Stop()
		progress = t.C
	}
	sentSinceTick := false
	for {
		changed := s.m.Changed()
		var st state
		var evs []*mvccpb.Event
		var upto uint64
		err := s.svc.ViewKV(ctx, false, func(r meta.KVReader) error {
			var err error
			if st, err = loadState(r); err != nil {
				return err
			}
			if next <= st.compactRev || next > st.rev {
				return nil
			}
			upto = st.rev
			n := 0
			errFull := errors.New("full")
			err = scanEvents(r, next, st.rev, func(rev uint64, ev *mvccpb.Event) error {
				if n >= watchBatch && rev != upto {
					upto = rev - 1
					return errFull
				}
				n++
				upto = rev
				if !inRange(ev.Kv.Key, cr.Key, cr.RangeEnd) ||
					(noPut && ev.Type == mvccpb.PUT) || (noDelete && ev.Type == mvccpb.DELETE) {
					return nil
				}
				if !cr.PrevKv {
					ev.PrevKv = nil
				}
				evs = append(evs, ev)
				return nil
			})
			if errors.Is(err, errFull) {
				err = nil
			}
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if next <= st.compactRev {
			_ = w.send(&pb.WatchResponse{Header: s.header(int64(st.rev)), WatchId: id, Canceled: true,
				CompactRevision: int64(st.compactRev), CancelReason: "etcdserver: mvcc: required revision has been compacted"})
			return errWatchCanceled
		}
		if upto >= next {
			if len(evs) > 0 {
				if err := w.send(&pb.WatchResponse{Header: s.header(int64(upto)), WatchId: id, Events: evs}); err != nil {
					return err
				}
				sentSinceTick = true
			}
			next = upto + 1
			if upto < st.rev {
				continue // more to read
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-progress:
			if !sentSinceTick {
				if err := w.send(&pb.WatchResponse{Header: s.header(int64(next - 1)), WatchId: id}); err != nil {
					return err
				}
			}
			sentSinceTick = false
		}
	}
}

// recvAll receives a stream's requests in the background until it fails
// or ctx ends (then the handler returns and the stream closes, which ends
// the pending Recv), so that handlers can stop on ctx.
func recvAll[T any](ctx context.Context, recv func() (*T, error)) <-chan *T {
	ch := make(chan *T)
	go func() {
		defer close(ch)
		for {
			r, err := recv()
			if err != nil {
				return
			}
			select {
			case ch <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}
