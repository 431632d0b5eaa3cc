//go:build cgo && linux

package rdma

/*
#cgo LDFLAGS: -libverbs
#include <infiniband/verbs.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

// ibv_query_port is a macro in verbs.h: wrap it for cgo.
static int dl_query_port(struct ibv_context *c, int port, struct ibv_port_attr *a) {
	return ibv_query_port(c, (uint8_t)port, a);
}

static struct ibv_device *dl_dev_at(struct ibv_device **l, int i) { return l[i]; }

static struct ibv_mr *dl_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access, int *err) {
	errno = 0;
	struct ibv_mr *mr = ibv_reg_mr(pd, addr, len, access);
	*err = mr ? 0 : errno;
	return mr;
}

static int dl_set_nonblock(int fd) {
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0) return errno;
	return fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? errno : 0;
}

static struct ibv_qp *dl_create_qp(struct ibv_pd *pd, struct ibv_cq *cq, int max_wr, int *err) {
	struct ibv_qp_init_attr ia;
	memset(&ia, 0, sizeof ia);
	ia.send_cq = cq; ia.recv_cq = cq; ia.qp_type = IBV_QPT_RC; ia.sq_sig_all = 1;
	ia.cap.max_send_wr = max_wr; ia.cap.max_recv_wr = 1;
	ia.cap.max_send_sge = 1; ia.cap.max_recv_sge = 1;
	errno = 0;
	struct ibv_qp *qp = ibv_create_qp(pd, &ia);
	*err = qp ? 0 : errno;
	return qp;
}

static int dl_qp_init(struct ibv_qp *qp, int port) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_INIT; a.pkey_index = 0; a.port_num = (uint8_t)port;
	a.qp_access_flags = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_LOCAL_WRITE;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int dl_qp_rtr(struct ibv_qp *qp, int port, uint32_t dqpn, uint32_t rq_psn, const uint8_t *dgid, int gidx, int mtu) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTR; a.path_mtu = (enum ibv_mtu)mtu; a.dest_qp_num = dqpn; a.rq_psn = rq_psn;
	a.max_dest_rd_atomic = 16; a.min_rnr_timer = 12;
	a.ah_attr.is_global = 1;
	memcpy(a.ah_attr.grh.dgid.raw, dgid, 16);
	a.ah_attr.grh.sgid_index = (uint8_t)gidx; a.ah_attr.grh.hop_limit = 64;
	a.ah_attr.port_num = (uint8_t)port;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
		IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

static int dl_qp_rts(struct ibv_qp *qp, uint32_t sq_psn, int timeout, int retry) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS; a.timeout = (uint8_t)timeout; a.retry_cnt = (uint8_t)retry;
	a.rnr_retry = 7; a.sq_psn = sq_psn; a.max_rd_atomic = 16;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
		IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

static int dl_qp_err(struct ibv_qp *qp) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_ERR;
	return ibv_modify_qp(qp, &a, IBV_QP_STATE);
}

static uint32_t dl_qp_num(struct ibv_qp *qp) { return qp->qp_num; }
static uint32_t dl_mr_lkey(struct ibv_mr *mr) { return mr->lkey; }
static uint32_t dl_mr_rkey(struct ibv_mr *mr) { return mr->rkey; }

typedef struct {
	uint64_t laddr, raddr, id;
	uint32_t len, lkey, rkey, pad;
} dl_read;

// Posts n chained, signalled RDMA READs. Returns 0, or the errno of
// ibv_post_send with *posted set to the WRs accepted before the bad one.
static int dl_post_reads(struct ibv_qp *qp, dl_read *ops, int n, int *posted) {
	struct ibv_sge sge[64];
	struct ibv_send_wr wr[64];
	int done = 0;
	*posted = 0;
	while (done < n) {
		int k = n - done < 64 ? n - done : 64;
		for (int i = 0; i < k; i++) {
			dl_read *o = &ops[done + i];
			sge[i].addr = o->laddr; sge[i].length = o->len; sge[i].lkey = o->lkey;
			memset(&wr[i], 0, sizeof wr[i]);
			wr[i].wr_id = o->id; wr[i].sg_list = &sge[i]; wr[i].num_sge = 1;
			wr[i].opcode = IBV_WR_RDMA_READ; wr[i].send_flags = IBV_SEND_SIGNALED;
			wr[i].wr.rdma.remote_addr = o->raddr; wr[i].wr.rdma.rkey = o->rkey;
			wr[i].next = i + 1 < k ? &wr[i + 1] : NULL;
		}
		struct ibv_send_wr *bad = NULL;
		int rc = ibv_post_send(qp, wr, &bad);
		if (rc != 0) {
			int ok = 0;
			if (bad) ok = (int)(bad - wr);
			*posted = done + ok;
			return rc;
		}
		done += k;
		*posted = done;
	}
	return 0;
}

typedef struct {
	uint64_t id;
	int32_t status;
	uint32_t vendor_err;
} dl_wc;

static int64_t dl_now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int dl_poll(struct ibv_cq *cq, dl_wc *out, int max) {
	struct ibv_wc wc[32];
	if (max > 32) max = 32;
	int n = ibv_poll_cq(cq, max, wc);
	for (int i = 0; i < n; i++) {
		out[i].id = wc[i].wr_id; out[i].status = wc[i].status; out[i].vendor_err = wc[i].vendor_err;
	}
	return n;
}

// dl_post_reads, then one poll of cq for completions into out (*reaped:
// how many; 0 after a poll error, which the next poll reports again): a
// READ that soft-RoCE completes inside the post is reaped in the same
// call.
static int dl_post_reads_poll(struct ibv_qp *qp, struct ibv_cq *cq, dl_read *ops, int n, int *posted, dl_wc *out, int max, int *reaped) {
	int rc = dl_post_reads(qp, ops, n, posted);
	*reaped = 0;
	if (*posted > 0) {
		int r = dl_poll(cq, out, max);
		if (r > 0) *reaped = r;
	}
	return rc;
}

// Reaps up to max completions: busy-polls for spin_us, then arms the CQ
// and sleeps on the completion channel for at most timeout_ms. Returns
// the number reaped (0: timeout) or -errno. timeout_ms < 0: spin only,
// never sleep.
static int dl_wait(struct ibv_cq *cq, struct ibv_comp_channel *ch, int spin_us, int timeout_ms, dl_wc *out, int max) {
	int n = dl_poll(cq, out, max);
	if (n != 0) return n < 0 ? -EIO : n;
	if (spin_us > 0) {
		int64_t end = dl_now_ns() + (int64_t)spin_us * 1000;
		do {
			n = dl_poll(cq, out, max);
			if (n != 0) return n < 0 ? -EIO : n;
		} while (dl_now_ns() < end);
	}
	if (timeout_ms < 0) return 0; // spin only
	if (ibv_req_notify_cq(cq, 0) != 0) return -EIO;
	n = dl_poll(cq, out, max); // a completion that raced the arming
	if (n != 0) return n < 0 ? -EIO : n;
	struct pollfd p = { .fd = ch->fd, .events = POLLIN };
	int r = poll(&p, 1, timeout_ms);
	if (r < 0) return errno == EINTR ? 0 : -errno;
	if (r > 0) {
		struct ibv_cq *ecq; void *ectx;
		if (ibv_get_cq_event(ch, &ecq, &ectx) == 0) ibv_ack_cq_events(ecq, 1);
	}
	n = dl_poll(cq, out, max);
	return n < 0 ? -EIO : n;
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Device is an opened RDMA device with one protection domain: every MR and
// QP made from it belongs to that PD. Safe for concurrent use.
type Device struct {
	name     string
	port     int
	gidIndex int
	gid      GID
	mtu      int // enum ibv_mtu of the port's active MTU

	mu     sync.Mutex
	ctx    *C.struct_ibv_context
	pd     *C.struct_ibv_pd
	mrs    int
	qps    int
	closed bool
}

// Devices lists the RDMA devices' names (empty: none).
func Devices() ([]string, error) {
	var num C.int
	list, err := C.ibv_get_device_list(&num)
	if list == nil {
		if errors.Is(err, syscall.ENOSYS) || err == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("rdma: ibv_get_device_list: %w", err)
	}
	defer C.ibv_free_device_list(list)
	names := make([]string, 0, int(num))
	for i := range int(num) {
		names = append(names, C.GoString(C.ibv_get_device_name(C.dl_dev_at(list, C.int(i)))))
	}
	return names, nil
}

// Open opens a device, queries its port and GID table and allocates a
// protection domain. It returns an error wrapping ErrNoDevice when there
// is no (matching) device.
func Open(cfg Config) (*Device, error) {
	port := cfg.Port
	if port <= 0 {
		port = 1
	}
	var num C.int
	list, err := C.ibv_get_device_list(&num)
	if list == nil {
		return nil, fmt.Errorf("%w (ibv_get_device_list: %v)", ErrNoDevice, err)
	}
	defer C.ibv_free_device_list(list)
	var dev *C.struct_ibv_device
	name := ""
	for i := range int(num) {
		d := C.dl_dev_at(list, C.int(i))
		n := C.GoString(C.ibv_get_device_name(d))
		if cfg.Device == "" || cfg.Device == n {
			dev, name = d, n
			break
		}
	}
	if dev == nil {
		if cfg.Device != "" {
			return nil, fmt.Errorf("%w named %q (%d devices)", ErrNoDevice, cfg.Device, int(num))
		}
		return nil, ErrNoDevice
	}
	ctx, err := C.ibv_open_device(dev)
	if ctx == nil {
		return nil, fmt.Errorf("rdma: open device %s: %w", name, err)
	}
	d := &Device{name: name, port: port, ctx: ctx}
	fail := func(e error) (*Device, error) {
		if d.pd != nil {
			C.ibv_dealloc_pd(d.pd)
		}
		C.ibv_close_device(ctx)
		return nil, e
	}
	var pa C.struct_ibv_port_attr
	if rc := C.dl_query_port(ctx, C.int(port), &pa); rc != 0 {
		return fail(fmt.Errorf("rdma: query port %d of %s: %w", port, name, syscall.Errno(rc)))
	}
	if pa.state != C.IBV_PORT_ACTIVE {
		return fail(fmt.Errorf("rdma: port %d of %s is not active (state %d)", port, name, int(pa.state)))
	}
	d.mtu = int(pa.active_mtu)
	if err := d.pickGID(cfg, int(pa.gid_tbl_len)); err != nil {
		return fail(err)
	}
	pd, err := C.ibv_alloc_pd(ctx)
	if pd == nil {
		return fail(fmt.Errorf("rdma: allocate protection domain on %s: %w", name, err))
	}
	d.pd = pd
	return d, nil
}

func (d *Device) pickGID(cfg Config, tblLen int) error {
	query := func(i int) (GID, bool) {
		var g C.union_ibv_gid
		if C.ibv_query_gid(d.ctx, C.uint8_t(d.port), C.int(i), &g) != 0 {
			return GID{}, false
		}
		var out GID
		copy(out[:], unsafe.Slice((*byte)(unsafe.Pointer(&g)), 16))
		return out, !out.IsZero()
	}
	if cfg.GIDIndex > 0 {
		g, ok := query(cfg.GIDIndex)
		if !ok {
			return fmt.Errorf("rdma: GID index %d of %s port %d is empty", cfg.GIDIndex, d.name, d.port)
		}
		d.gidIndex, d.gid = cfg.GIDIndex, g
		return nil
	}
	var want net.IP
	if cfg.IP != nil {
		want = cfg.IP.To4()
	}
	first, mapped := -1, -1
	var firstG, mappedG GID
	for i := range min(tblLen, 256) {
		g, ok := query(i)
		if !ok {
			continue
		}
		if ip, v4 := g.IPv4(); v4 {
			if want != nil && ip.Equal(want) {
				d.gidIndex, d.gid = i, g
				return nil
			}
			if mapped < 0 {
				mapped, mappedG = i, g
			}
		}
		if first < 0 {
			first, firstG = i, g
		}
	}
	switch {
	case want != nil:
		return fmt.Errorf("rdma: no GID for %s on %s port %d (is rxe bound to the netdev with that address?)", want, d.name, d.port)
	case mapped >= 0:
		d.gidIndex, d.gid = mapped, mappedG
	case first >= 0:
		d.gidIndex, d.gid = first, firstG
	default:
		return fmt.Errorf("rdma: no non-zero GID on %s port %d (is the netdev up with an address?)", d.name, d.port)
	}
	return nil
}

// Name returns the device name.
func (d *Device) Name() string { return d.name }

// GID returns the GID this device's QPs use, GIDIndex its table index.
func (d *Device) GID() GID { return d.gid }

// GIDIndex returns the index of GID in the port's table.
func (d *Device) GIDIndex() int { return d.gidIndex }

// MTU returns the port's active MTU in bytes.
func (d *Device) MTU() int { return mtuBytes(d.mtu) }

// Close releases the protection domain and the device; every MR and QP
// must be closed first.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	if d.mrs != 0 || d.qps != 0 {
		return fmt.Errorf("rdma: close %s: %d memory regions and %d queue pairs still open", d.name, d.mrs, d.qps)
	}
	d.closed = true
	var errs []error
	if rc := C.ibv_dealloc_pd(d.pd); rc != 0 {
		errs = append(errs, fmt.Errorf("rdma: deallocate PD of %s: %w", d.name, syscall.Errno(rc)))
	}
	if rc := C.ibv_close_device(d.ctx); rc != 0 {
		errs = append(errs, fmt.Errorf("rdma: close %s: %w", d.name, syscall.Errno(rc)))
	}
	return errors.Join(errs...)
}

// MR is a registered memory region.
type MR struct {
	d    *Device
	mu   sync.Mutex
	mr   *C.struct_ibv_mr
	buf  []byte
	lkey uint32 // mr's, read once at registration (a READ needs no cgo call for it)
}

// Register registers mem (which must not be Go-managed memory: use
// AllocBuffer or another mmap'd region, and keep it mapped until Close)
// with the given access rights (AccessLocalWrite is always added).
func (d *Device) Register(mem []byte, access Access) (*MR, error) {
	if len(mem) == 0 {
		return nil, errors.New("rdma: register an empty buffer")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	flags := C.int(C.IBV_ACCESS_LOCAL_WRITE)
	if access&AccessRemoteRead != 0 {
		flags |= C.IBV_ACCESS_REMOTE_READ
	}
	if access&AccessRemoteWrite != 0 {
		flags |= C.IBV_ACCESS_REMOTE_WRITE
	}
	var cerr C.int
	mr := C.dl_reg_mr(d.pd, unsafe.Pointer(unsafe.SliceData(mem)), C.size_t(len(mem)), flags, &cerr)
	if mr == nil {
		err := memlockHint(len(mem), syscall.Errno(cerr))
		return nil, fmt.Errorf("rdma: register %d bytes on %s: %w", len(mem), d.name, err)
	}
	d.mrs++
	return &MR{d: d, mr: mr, buf: mem, lkey: uint32(C.dl_mr_lkey(mr))}, nil
}

// Bytes returns the registered memory.
func (m *MR) Bytes() []byte { return m.buf }

// Addr returns the address peers use in READs of this region.
func (m *MR) Addr() uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(m.buf)))) }

// LKey returns the local key.
func (m *MR) LKey() uint32 { return m.lkey }

// RKey returns the remote key: give it only to authenticated peers.
func (m *MR) RKey() uint32 { return uint32(C.dl_mr_rkey(m.mr)) }

// Region returns the region as peers address it.
func (m *MR) Region() Region { return Region{Addr: m.Addr(), Len: uint64(len(m.buf)), RKey: m.RKey()} }

// Close deregisters the region (the memory stays mapped: the caller's).
func (m *MR) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mr == nil {
		return nil
	}
	if rc := C.ibv_dereg_mr(m.mr); rc != 0 {
		return fmt.Errorf("rdma: deregister MR: %w", syscall.Errno(rc))
	}
	m.mr = nil
	m.d.mu.Lock()
	m.d.mrs--
	m.d.mu.Unlock()
	return nil
}

// QP is a reliable connected queue pair with its own completion queue and
// completion channel. Read is safe for concurrent use.
type QP struct {
	d   *Device
	cfg QPConfig
	psn uint32
	qp  *C.struct_ibv_qp
	cq  *C.struct_ibv_cq
	ch  *C.struct_ibv_comp_channel

	slots chan struct{} // one token per READ in flight

	mu        sync.Mutex
	nextID    uint64
	batches   map[uint64]*batch // wr_id -> its batch
	connected bool
	broken    error
	closed    bool

	pollMu   sync.Mutex
	pollFree chan struct{} // a token when the poller role is free
	wcs      [32]C.dl_wc   // the poller's completions (guarded by pollMu)

	wrs [16]C.dl_read // work requests of a small Read (guarded by mu)
}

// batch is the READs of one Read call. left and err are guarded by the
// QP's mu; fin is set (under mu, after err) when the last READ is in, and
// done, made only for a waiter that has to block, is closed then: a READ
// whose caller reaps it itself allocates no channel.
type batch struct {
	left int
	err  error
	fin  atomic.Bool
	done chan struct{}
}

// finishLocked marks b complete (q.mu held).
func (b *batch) finishLocked() {
	b.fin.Store(true)
	if b.done != nil {
		close(b.done)
	}
}

// doneChan returns a channel closed when b completes, or nil when it
// already has.
func (q *QP) doneChan(b *batch) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.fin.Load() {
		return nil
	}
	if b.done == nil {
		b.done = make(chan struct{})
	}
	return b.done
}

// NewQP creates an RC queue pair in the INIT state; connect it with
// Connect after exchanging Endpoints with the peer.
func (d *Device) NewQP(cfg QPConfig) (*QP, error) {
	cfg = cfg.withDefaults()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	q := &QP{d: d, cfg: cfg, psn: rand.Uint32() & 0xffffff, batches: make(map[uint64]*batch),
		slots: make(chan struct{}, cfg.MaxOutstanding), pollFree: make(chan struct{}, 1)}
	ch, err := C.ibv_create_comp_channel(d.ctx)
	if ch == nil {
		return nil, fmt.Errorf("rdma: create completion channel on %s: %w", d.name, err)
	}
	q.ch = ch
	if rc := C.dl_set_nonblock(ch.fd); rc != 0 {
		q.destroy()
		return nil, fmt.Errorf("rdma: completion channel non-blocking: %w", syscall.Errno(rc))
	}
	cq, err := C.ibv_create_cq(d.ctx, C.int(cfg.MaxOutstanding+1), nil, ch, 0)
	if cq == nil {
		q.destroy()
		return nil, fmt.Errorf("rdma: create CQ of %d entries on %s: %w", cfg.MaxOutstanding+1, d.name, err)
	}
	q.cq = cq
	var cerr C.int
	qp := C.dl_create_qp(d.pd, cq, C.int(cfg.MaxOutstanding), &cerr)
	if qp == nil {
		q.destroy()
		return nil, fmt.Errorf("rdma: create RC QP on %s: %w", d.name, syscall.Errno(cerr))
	}
	q.qp = qp
	if rc := C.dl_qp_init(qp, C.int(d.port)); rc != 0 {
		q.destroy()
		return nil, fmt.Errorf("rdma: QP %d to INIT: %w", uint32(C.dl_qp_num(qp)), syscall.Errno(rc))
	}
	d.qps++
	return q, nil
}

// destroy frees whatever of the QP exists; d.mu is held by the caller or
// not needed (the QP was never counted).
func (q *QP) destroy() error {
	var errs []error
	if q.qp != nil {
		if rc := C.ibv_destroy_qp(q.qp); rc != 0 {
			errs = append(errs, fmt.Errorf("destroy QP: %w", syscall.Errno(rc)))
		}
		q.qp = nil
	}
	if q.cq != nil {
		if rc := C.ibv_destroy_cq(q.cq); rc != 0 {
			errs = append(errs, fmt.Errorf("destroy CQ: %w", syscall.Errno(rc)))
		}
		q.cq = nil
	}
	if q.ch != nil {
		if rc := C.ibv_destroy_comp_channel(q.ch); rc != 0 {
			errs = append(errs, fmt.Errorf("destroy completion channel: %w", syscall.Errno(rc)))
		}
		q.ch = nil
	}
	return errors.Join(errs...)
}

// Endpoint returns what the peer needs to connect to this QP.
func (q *QP) Endpoint() Endpoint {
	return Endpoint{QPN: uint32(C.dl_qp_num(q.qp)), PSN: q.psn, GID: q.d.gid, MTU: mtuBytes(q.d.mtu)}
}

// Connect moves the QP to RTR and RTS towards the peer's endpoint (path
// MTU: the smaller of both ports').
func (q *QP) Connect(remote Endpoint) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if q.connected {
		return errors.New("rdma: QP already connected")
	}
	mtu := q.d.mtu
	if e := mtuEnum(remote.MTU); e != 0 && e < mtu {
		mtu = e
	}
	qpn := uint32(C.dl_qp_num(q.qp))
	if rc := C.dl_qp_rtr(q.qp, C.int(q.d.port), C.uint32_t(remote.QPN), C.uint32_t(remote.PSN),
		(*C.uint8_t)(unsafe.Pointer(&remote.GID[0])), C.int(q.d.gidIndex), C.int(mtu)); rc != 0 {
		return fmt.Errorf("rdma: QP %d to RTR towards QP %d at %s: %w", qpn, remote.QPN, remote.GID, syscall.Errno(rc))
	}
	if rc := C.dl_qp_rts(q.qp, C.uint32_t(q.psn), C.int(q.cfg.TimeoutExponent), C.int(q.cfg.RetryCount)); rc != 0 {
		return fmt.Errorf("rdma: QP %d to RTS: %w", qpn, syscall.Errno(rc))
	}
	q.connected = true
	return nil
}

// Err returns why the QP is broken (nil while usable).
func (q *QP) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.broken
}

// MaxOutstanding returns the bound on READs in flight.
func (q *QP) MaxOutstanding() int { return q.cfg.MaxOutstanding }

// Read posts the READs as one batch (chained, each signalled) and waits
// for all of them. On ctx's end the QP is moved to the error state (so the
// NIC stops writing into the local buffers) and Read returns once the
// flushed completions are in. The first failed completion is returned as
// a *CompletionError; the QP is then broken.
func (q *QP) Read(ctx context.Context, ops ...ReadOp) error {
	return q.read(ctx, time.Time{}, ops)
}

// ReadWithin is Read bounded by timeout as well as ctx (timeout <= 0:
// ctx alone), without a derived context: no timer is armed while the
// READs complete in time, so a READ costs no timer and no wake-up of an
// idle thread. A READ still in flight after timeout is abandoned as on
// ctx's end, and the error wraps context.DeadlineExceeded.
func (q *QP) ReadWithin(ctx context.Context, timeout time.Duration, ops ...ReadOp) error {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	return q.read(ctx, deadline, ops)
}

// read is Read with an optional deadline (zero: none).
func (q *QP) read(ctx context.Context, deadline time.Time, ops []ReadOp) error {
	if len(ops) == 0 {
		return nil
	}
	if len(ops) > q.cfg.MaxOutstanding {
		return fmt.Errorf("rdma: batch of %d READs exceeds the QP's %d outstanding", len(ops), q.cfg.MaxOutstanding)
	}
	for i, op := range ops {
		if op.Local == nil || op.Length <= 0 || op.Length > maxReadLength || op.Offset < 0 || op.Offset+op.Length > len(op.Local.buf) {
			return fmt.Errorf("rdma: READ %d: %d bytes at offset %d do not fit the local region", i, op.Length, op.Offset)
		}
		op.Local.mu.Lock()
		open := op.Local.mr != nil
		op.Local.mu.Unlock()
		if !open {
			return fmt.Errorf("rdma: READ %d: local region closed", i)
		}
	}
	for range ops { // bound what is in flight (back-pressure)
		select {
		case q.slots <- struct{}{}:
		case <-ctx.Done():
			q.release(0) // nothing posted
			return fmt.Errorf("rdma: wait for a free send slot: %w", ctx.Err())
		}
	}
	b := &batch{}
	// A caller that can take the poller role polls in the call that
	// posts (one cgo call when the READ completes at once).
	polling := q.pollMu.TryLock()
	q.mu.Lock()
	var early error
	switch {
	case q.closed:
		early = ErrClosed
	case q.broken != nil:
		early = q.broken
	case !q.connected:
		early = errors.New("rdma: READ on a QP that is not connected")
	}
	if early != nil {
		q.mu.Unlock()
		q.release(len(ops))
		if polling {
			q.releasePoller()
		}
		return early
	}
	// The work requests: in the QP's scratch (guarded by mu, which is
	// held until they are posted) unless the batch is large.
	wrs := q.wrs[:0]
	if len(ops) > len(q.wrs) {
		wrs = make([]C.dl_read, 0, len(ops))
	}
	for _, op := range ops {
		q.nextID++
		wrs = append(wrs, C.dl_read{id: C.uint64_t(q.nextID), laddr: C.uint64_t(op.Local.Addr() + uint64(op.Offset)), raddr: C.uint64_t(op.RemoteAddr),
			len: C.uint32_t(op.Length), lkey: C.uint32_t(op.Local.lkey), rkey: C.uint32_t(op.RKey)})
		q.batches[q.nextID] = b
	}
	var posted, reaped C.int
	var rc C.int
	if polling {
		rc = C.dl_post_reads_poll(q.qp, q.cq, &wrs[0], C.int(len(wrs)), &posted, &q.wcs[0], C.int(len(q.wcs)), &reaped)
	} else {
		rc = C.dl_post_reads(q.qp, &wrs[0], C.int(len(wrs)), &posted)
	}
	b.left = int(posted)
	var postErr error
	if rc != 0 {
		for i := int(posted); i < len(wrs); i++ {
			delete(q.batches, uint64(wrs[i].id))
		}
		postErr = fmt.Errorf("rdma: post %d READs (%d accepted): %w", len(wrs), int(posted), syscall.Errno(rc))
		q.breakLocked(postErr)
	}
	if b.left == 0 {
		b.finishLocked()
	}
	q.mu.Unlock()
	if n := len(wrs) - int(posted); n > 0 {
		q.release(n)
	}
	if reaped > 0 {
		q.dispatch(q.wcs[:reaped])
	}
	err := q.wait(ctx, deadline, b, polling)
	if postErr != nil {
		return postErr
	}
	return err
}

func (q *QP) release(n int) {
	for range n {
		<-q.slots
	}
}

// breakLocked records the first cause and moves the QP to the error state,
// which flushes every posted WR with a completion.
func (q *QP) breakLocked(cause error) {
	if q.broken != nil {
		return
	}
	q.broken = fmt.Errorf("%w: %w", ErrQPBroken, cause)
	if q.qp != nil {
		C.dl_qp_err(q.qp)
	}
}

// errAbandoned is the cause of READs abandoned by another waiter.
var errAbandoned = errors.New("READs abandoned")

// errTimedOut is the cause of a READ abandoned at its deadline.
var errTimedOut = fmt.Errorf("READ timed out: %w", context.DeadlineExceeded)

// expired returns why the wait for a READ must end (ctx's end or the
// deadline passed), or nil.
func expired(ctx context.Context, deadline time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return errTimedOut
	}
	return nil
}

// releasePoller gives up the poller role and hands it to a waiter.
func (q *QP) releasePoller() {
	q.pollMu.Unlock()
	select {
	case q.pollFree <- struct{}{}:
	default:
	}
}

// wait returns when b's READs are all complete, polling as the QP's
// poller when nobody else is (polling: the caller holds that role).
func (q *QP) wait(ctx context.Context, deadline time.Time, b *batch, polling bool) error {
	ctxDone := ctx.Done()
	var hard <-chan time.Time
	var timer *time.Timer // the deadline, armed only when waiting for another poller
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var timeout <-chan time.Time
	var why error // set when the READs were abandoned
	cancelled := false
	for {
		if b.fin.Load() {
			if polling {
				q.releasePoller()
			}
			return b.err
		}
		if polling || q.pollMu.TryLock() {
			polling = false
			err := q.pollUntil(ctx, deadline, cancelled, b)
			q.releasePoller()
			if err != nil {
				return err
			}
			return b.err
		}
		if timer == nil && !deadline.IsZero() && !cancelled {
			timer = time.NewTimer(time.Until(deadline))
			timeout = timer.C
		}
		done := q.doneChan(b)
		if done == nil {
			return b.err
		}
		var cause error
		select {
		case <-done:
			return b.err
		case <-q.pollFree:
		case <-ctxDone:
			cause = ctx.Err()
		case <-timeout:
			cause = errTimedOut
		case <-hard:
			return fmt.Errorf("%w 5s after cancel: %w", ErrNotFlushed, why)
		}
		if cause != nil {
			why = cause
			q.cancel(cause)
			cancelled = true
			ctxDone, timeout = nil, nil
			hard = time.After(5 * time.Second)
		}
	}
}

// cancel abandons the READs in flight: the QP goes to the error state.
func (q *QP) cancel(cause error) {
	q.mu.Lock()
	q.breakLocked(fmt.Errorf("READ abandoned: %w", cause))
	q.mu.Unlock()
}

// spinChunkMicroseconds bounds one busy-poll inside C. A cgo call that
// runs past sysmon's retake tick (about 20 us) loses its P to another
// thread, and getting one back on return costs thread wake-ups, more than
// a READ on an emulated CPU: the poller spins in short calls instead.
const spinChunkMicroseconds = 10

// pollUntil reaps completions (for any batch) until b is done: it spins
// on the CQ for SpinMicroseconds (in calls of spinChunkMicroseconds), then
// sleeps on the completion channel, and spins again after each wake-up.
func (q *QP) pollUntil(ctx context.Context, deadline time.Time, cancelled bool, b *batch) error {
	wcs := &q.wcs
	var flushBy time.Time // after a cancel: the flush must be in by then
	why := error(errAbandoned)
	if cancelled {
		flushBy = time.Now().Add(5 * time.Second)
	}
	spin := time.Duration(q.cfg.SpinMicroseconds) * time.Microsecond
	spinUntil := time.Now().Add(spin)
	for {
		if b.fin.Load() {
			return nil
		}
		if q.cq == nil { // destroyed by Close (which holds pollMu to do it)
			return ErrClosed
		}
		if flushBy.IsZero() {
			if cause := expired(ctx, deadline); cause != nil {
				why = cause
				q.cancel(cause)
				flushBy = time.Now().Add(5 * time.Second)
			}
		}
		if !flushBy.IsZero() && time.Now().After(flushBy) {
			return fmt.Errorf("%w 5s after cancel: %w", ErrNotFlushed, why)
		}
		var n C.int
		if spin > 0 && time.Now().Before(spinUntil) {
			n = C.dl_wait(q.cq, q.ch, spinChunkMicroseconds, -1, &wcs[0], C.int(len(wcs)))
		} else {
			n = C.dl_wait(q.cq, q.ch, 0, 10, &wcs[0], C.int(len(wcs)))
			spinUntil = time.Now().Add(spin)
		}
		if n < 0 {
			q.mu.Lock()
			q.breakLocked(fmt.Errorf("poll CQ: %w", syscall.Errno(-n)))
			q.mu.Unlock()
			continue
		}
		if n > 0 {
			q.dispatch(wcs[:n])
		}
	}
}

// dispatch hands completions to their batches.
func (q *QP) dispatch(wcs []C.dl_wc) {
	q.mu.Lock()
	freed := 0
	for _, wc := range wcs {
		id := uint64(wc.id)
		b := q.batches[id]
		if b == nil {
			continue
		}
		delete(q.batches, id)
		freed++
		if st := int(wc.status); st != StatusSuccess && b.err == nil {
			ce := &CompletionError{Status: st, StatusText: C.GoString(C.ibv_wc_status_str(C.enum_ibv_wc_status(st))),
				VendorErr: uint32(wc.vendor_err), Op: "RDMA READ"}
			if q.broken != nil && st == StatusFlushed {
				b.err = fmt.Errorf("%w (%w)", q.broken, ce)
			} else {
				b.err = ce
				q.breakLocked(ce)
			}
		}
		b.left--
		if b.left == 0 {
			b.finishLocked()
		}
	}
	q.mu.Unlock()
	q.release(freed)
}

// Close moves the QP to the error state, waits (up to 5 s) for READs in
// flight to flush and destroys the QP, its CQ and completion channel.
func (q *QP) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.breakLocked(ErrClosed)
	q.mu.Unlock()
	// Reap what is left so nobody waits forever and no buffer is written
	// after we return.
	deadline := time.Now().Add(5 * time.Second)
	var wcs [32]C.dl_wc
	for time.Now().Before(deadline) {
		q.mu.Lock()
		left := len(q.batches)
		q.mu.Unlock()
		if left == 0 {
			break
		}
		if q.pollMu.TryLock() {
			if n := C.dl_wait(q.cq, q.ch, 0, 10, &wcs[0], C.int(len(wcs))); n > 0 {
				q.dispatch(wcs[:n])
			}
			q.pollMu.Unlock()
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	q.pollMu.Lock() // no poller inside C any more
	defer q.pollMu.Unlock()
	q.mu.Lock()
	for id, b := range q.batches { // not flushed in time: fail the waiters
		delete(q.batches, id)
		if b.left > 0 {
			b.left = 0
			b.err = fmt.Errorf("%w before close: %w", ErrNotFlushed, ErrClosed)
			b.finishLocked()
		}
	}
	q.mu.Unlock()
	q.d.mu.Lock()
	defer q.d.mu.Unlock()
	err := q.destroy()
	q.d.qps--
	if err != nil {
		return fmt.Errorf("rdma: close QP: %w", err)
	}
	return nil
}
