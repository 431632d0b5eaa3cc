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

// ClusterStatus is the cluster as one node sees it.
type ClusterStatus struct {
	// Node is the id of the node that answered.
	Node       string         `json:"node"`
	LeaderID   string         `json:"leader_id"`
	LeaderAddr string         `json:"leader_addr"`
	Members    []MemberStatus `json:"members"`
}

// MemberStatus is one member of the Raft configuration.
type MemberStatus struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// Suffrage is "voter" or "nonvoter".
	Suffrage string `json:"suffrage"`
	// The fields below come from the member itself; Error is set (and
	// they are zero) when it could not be asked.
	NodeInfo
	Error string `json:"error,omitempty"`
}

// NodeInfo is a node's own view of its Raft state.
type NodeInfo struct {
	// State is "leader", "follower", "candidate" or "shutdown".
	State string `json:"state,omitempty"`
	Term  uint64 `json:"term,omitempty"`
	// Applied is the last log index the node's state machine has seen.
	Applied uint64 `json:"applied"`
	// Commit is the node's commit index.
	Commit uint64 `json:"commit"`
	// LastContactMs is how long ago the node last heard from the leader
	// in milliseconds (0 on the leader, -1 never).
	LastContactMs int64 `json:"last_contact_ms"`
}

func suffrageName(s raft.ServerSuffrage) string {
	if s == raft.Voter {
		return "voter"
	}
	return "nonvoter"
}

func (s *Service) nodeInfo() NodeInfo {
	info := NodeInfo{
		State:   stateName(s.raft.State()),
		Term:    s.raft.CurrentTerm(),
		Applied: s.fsm.seen.Load(),
		Commit:  s.raft.CommitIndex(),
	}
	switch lc := s.raft.LastContact(); {
	case info.State == "leader":
	case lc.IsZero():
		info.LastContactMs = -1
	default:
		info.LastContactMs = time.Since(lc).Milliseconds()
	}
	return info
}

func stateName(st raft.RaftState) string {
	switch st {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	default:
		return "shutdown"
	}
}

// Status returns the leader and every member with its role, applied index
// and last contact. Each member is asked over RPC for its own view; one
// that does not answer within a second is listed with Error set.
func (s *Service) Status(ctx context.Context) (ClusterStatus, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ClusterStatus{}, ErrClosed
	}
	f := s.raft.GetConfiguration()
	if err := wait(ctx, f); err != nil {
		return ClusterStatus{}, fmt.Errorf("meta: read configuration: %w", err)
	}
	addr, id := s.raft.LeaderWithID()
	st := ClusterStatus{Node: s.cfg.NodeID, LeaderID: string(id), LeaderAddr: string(addr)}
	servers := f.Configuration().Servers
	st.Members = make([]MemberStatus, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		m := &st.Members[i]
		m.ID, m.Addr, m.Suffrage = string(srv.ID), string(srv.Address), suffrageName(srv.Suffrage)
		if m.ID == s.cfg.NodeID {
			m.NodeInfo = s.nodeInfo()
			continue
		}
		if !s.cfg.clustered() {
			m.Error = "not clustered"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			resp, err := s.cfg.Transport.Call(cctx, m.Addr, OpNodeInfo, nil)
			if err == nil {
				err = json.Unmarshal(resp, &m.NodeInfo)
			}
			if err != nil {
				m.Error = err.Error()
			}
		}()
	}
	wg.Wait()
	return st, nil
}

// AddMember adds a node to the cluster, as a voter or a non-voter; on a
// follower the request is forwarded to the leader. Adding a member that
// exists updates its address and promotes a non-voter with voter set.
func (s *Service) AddMember(ctx context.Context, id, addr string, voter bool) error {
	return s.changeMembership(ctx, OpAddMember, memberRequest{ID: id, Addr: addr, Voter: voter})
}

// RemoveMember removes a node from the cluster (forwarded to the leader).
// Removing the leader makes it step down after the change commits.
func (s *Service) RemoveMember(ctx context.Context, id string) error {
	return s.changeMembership(ctx, OpRemoveMember, memberRequest{ID: id})
}

func (s *Service) changeMembership(ctx context.Context, op uint16, req memberRequest) error {
	if req.ID == "" {
		return errors.New("meta: member id is empty")
	}
	ctx, cancel := s.retryContext(ctx)
	defer cancel()
	body, _ := json.Marshal(req)
	var last error
	for attempt := 0; ; attempt++ {
		err := s.changeMembershipOnce(ctx, op, req, body)
		if err == nil || errors.Is(err, ErrClosed) {
			return err
		}
		last = err
		if berr := s.backoff(ctx, attempt); berr != nil {
			return fmt.Errorf("meta: membership change: %w (last error: %v)", berr, last)
		}
	}
}

func (s *Service) changeMembershipOnce(ctx context.Context, op uint16, req memberRequest, body []byte) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	if s.raft.State() == raft.Leader {
		defer s.mu.RUnlock()
		var f raft.IndexFuture
		switch {
		case op == OpRemoveMember:
			f = s.raft.RemoveServer(raft.ServerID(req.ID), 0, timeoutOf(ctx))
		case req.Addr == "":
			return errors.New("meta: member address is empty")
		case req.Voter:
			f = s.raft.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.Addr), 0, timeoutOf(ctx))
		default:
			f = s.raft.AddNonvoter(raft.ServerID(req.ID), raft.ServerAddress(req.Addr), 0, timeoutOf(ctx))
		}
		if err := wait(ctx, f); err != nil {
			return fmt.Errorf("meta: change membership of %s: %w", req.ID, err)
		}
		s.logger.Info("membership changed", "op", op, "id", req.ID, "addr", req.Addr, "voter", req.Voter)
		return nil
	}
	addr := s.leaderAddr()
	s.mu.RUnlock()
	if addr == "" {
		return errNoLeader
	}
	cctx, cancel := s.attemptContext(ctx)
	defer cancel()
	if _, err := s.cfg.Transport.Call(cctx, addr, op, body); err != nil {
		return fmt.Errorf("meta: forward membership change to %s: %w", addr, err)
	}
	return nil
}

func (s *Service) handleAddMember(ctx context.Context, peer string, req []byte) ([]byte, error) {
	var m memberRequest
	if err := json.Unmarshal(req, &m); err != nil {
		return nil, fmt.Errorf("meta: bad add-member request: %w", err)
	}
	return nil, s.changeMembershipOnce(ctx, OpAddMember, m, req)
}

func (s *Service) handleRemoveMember(ctx context.Context, peer string, req []byte) ([]byte, error) {
	var m memberRequest
	if err := json.Unmarshal(req, &m); err != nil {
		return nil, fmt.Errorf("meta: bad remove-member request: %w", err)
	}
	return nil, s.changeMembershipOnce(ctx, OpRemoveMember, m, req)
}

func (s *Service) handleStatus(ctx context.Context, peer string, req []byte) ([]byte, error) {
	st, err := s.Status(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(st)
}

func (s *Service) handleNodeInfo(ctx context.Context, peer string, req []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	return json.Marshal(s.nodeInfo())
}

// RemoteStatus asks the node at addr for the cluster status.
func RemoteStatus(ctx context.Context, c Caller, addr string) (ClusterStatus, error) {
	var st ClusterStatus
	resp, err := c.Call(ctx, addr, OpStatus, nil)
	if err != nil {
		return st, fmt.Errorf("meta: status from %s: %w", addr, err)
	}
	if err := json.Unmarshal(resp, &st); err != nil {
		return st, fmt.Errorf("meta: status from %s: %w", addr, err)
	}
	return st, nil
}

// RemoteAddMember asks the node at addr (any member) to add node id at
// memberAddr.
func RemoteAddMember(ctx context.Context, c Caller, addr, id, memberAddr string, voter bool) error {
	body, _ := json.Marshal(memberRequest{ID: id, Addr: memberAddr, Voter: voter})
	if _, err := c.Call(ctx, addr, OpAddMember, body); err != nil {
		return fmt.Errorf("meta: add member %s via %s: %w", id, addr, err)
	}
	return nil
}

// RemoteRemoveMember asks the node at addr (any member) to remove node id.
func RemoteRemoveMember(ctx context.Context, c Caller, addr, id string) error {
	body, _ := json.Marshal(memberRequest{ID: id})
	if _, err := c.Call(ctx, addr, OpRemoveMember, body); err != nil {
		return fmt.Errorf("meta: remove member %s via %s: %w", id, addr, err)
	}
	return nil
}

// beIno decodes an inode number request.
func beIno(b []byte) (Ino, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("meta: bad inode request of %d bytes", len(b))
	}
	return Ino(binary.BigEndian.Uint64(b)), nil
}
