// Package s3gw is the S3 gateway of a datenlord node: an HTTP server
// speaking the S3 REST API (path-style addressing) over the node's file
// system, so that the same data is reachable through FUSE and S3.
//
// # Mapping
//
// Buckets are the top-level directories of the namespace whose names are
// valid S3 bucket names; objects are regular files, a key's '/' separating
// directories ("a/b/c" is file c in directory a/b of the bucket). A key
// ending in '/' is a directory marker: PUT creates the directory, and an
// empty directory is listed as such a zero-byte object. Keys that a file
// system cannot represent ("a//b", "a/./b", "..", a NUL byte) are refused
// with InvalidArgument; a key whose prefix is an existing object (or an
// object whose name is an existing prefix) with ObjectConflict (409).
// Deleting an object removes the directories it leaves empty.
//
// Object metadata (ETag, Content-Type, x-amz-meta-* and a few standard
// headers) is kept as JSON in the extended attribute "user.s3.object" of
// the file, together with the inode's content version when it was
// written. A file written through FUSE (or changed through FUSE after an
// S3 write, which raises its version) has no valid record: its ETag is a
// stable 32-hex-digit digest of inode, version, size and mtime (so it
// changes whenever the content does, but is not the MD5 of the data) and
// its Content-Type is guessed from the file name extension.
//
// # Writes
//
// PutObject, CopyObject and CompleteMultipartUpload stream the body into
// an fs.ObjectWriter: full blocks go to the store while the rest is still
// arriving (write-behind, within the node's dirty budget) and into the
// page cache, so a GET of a just-written object is served from memory.
// Once every block is in the store, one metadata command
// (meta.Service.PutObject) creates the file with its block map, size and
// metadata xattr and links it under its key, replacing the old object: a
// reader sees the old or the new object, never a partial one, and the
// object is durable before the response. No object is held in memory.
// Multipart parts are files in ".datenlord-s3/uploads/ID"; completion
// moves their blocks into the new object (see assemble). The hidden
// directory is not a bucket; its "tmp/NODE" held the temporary files of
// earlier versions and is emptied at start.
//
// # Authentication
//
// Every request must be signed with AWS Signature V4 (header or presigned
// URL) by a configured access key; see auth.go and chunked.go.
package s3gw

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/meta"
)

// Names of the gateway's hidden directory tree.
const (
	hiddenDir  = ".datenlord-s3"
	tmpDir     = "tmp"
	uploadsDir = "uploads"
	// xattrObject holds an object's metadata record (JSON).
	xattrObject = "user.s3.object"
	// xattrUpload holds a multipart upload's record (JSON).
	xattrUpload = "user.s3.upload"
)

// Config configures a Gateway.
type Config struct {
	// Files is the file system the gateway serves.
	Files *fs.Files
	// Secrets returns the secret of an access key.
	Secrets SecretLookup
	// NodeID names this node's temporary directory (empty: "local").
	NodeID string
	// Registerer receives the gateway metrics (nil: none).
	Registerer prometheus.Registerer
	// Logger receives logs (nil: slog.Default()).
	Logger *slog.Logger
	// Now is the clock for signature times (nil: time.Now).
	Now func() time.Time
}

// Gateway is the S3 API as an http.Handler.
type Gateway struct {
	files  *fs.Files
	cfg    Config
	log    *slog.Logger
	m      *metrics
	tmpIno meta.Ino
	upIno  meta.Ino
	// hiddenIno is the gateway's top-level directory.
	hiddenIno meta.Ino
	// bodies recycles the *rangeBody of GET responses (stream.go).
	bodies sync.Pool
}

// New prepares the gateway's hidden directories (removing the temporary
// files a previous run of this node left behind) and returns the gateway.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.Files == nil || cfg.Secrets == nil {
		return nil, errors.New("s3gw: Files and Secrets are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "local"
	}
	g := &Gateway{files: cfg.Files, cfg: cfg, log: cfg.Logger}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	g.m = m
	h, err := g.files.Mkdir(ctx, meta.RootIno, hiddenDir, 0o700)
	if err != nil {
		return nil, fmt.Errorf("s3gw: create %s: %w", hiddenDir, err)
	}
	g.hiddenIno = h.Ino
	t, err := g.files.Mkdir(ctx, h.Ino, tmpDir, 0o700)
	if err != nil {
		return nil, fmt.Errorf("s3gw: create %s/%s: %w", hiddenDir, tmpDir, err)
	}
	nt, err := g.files.Mkdir(ctx, t.Ino, cfg.NodeID, 0o700)
	if err != nil {
		return nil, fmt.Errorf("s3gw: create the temporary directory of node %s: %w", cfg.NodeID, err)
	}
	g.tmpIno = nt.Ino
	u, err := g.files.Mkdir(ctx, h.Ino, uploadsDir, 0o700)
	if err != nil {
		return nil, fmt.Errorf("s3gw: create %s/%s: %w", hiddenDir, uploadsDir, err)
	}
	g.upIno = u.Ino
	if n, err := g.removeTree(ctx, g.tmpIno); err != nil {
		g.log.Warn("s3gw: remove stale temporary files", "err", err)
	} else if n > 0 {
		g.log.Info("s3gw: removed stale temporary files", "count", n)
	}
	return g, nil
}

// Server is a running HTTP(S) server of a Gateway.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Serve listens on addr (with TLS when tc is set) and serves g until
// Shutdown.
func Serve(addr string, tc *tls.Config, g *Gateway) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("s3gw: listen on %s: %w", addr, err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	s := &Server{
		srv: &http.Server{
			Handler:           g,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    1 << 20,
			ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops accepting requests and waits for running ones until ctx
// ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("s3gw: shutdown: %w", err), s.srv.Close())
	}
	return errors.Join(err, <-s.done)
}

// reqState is one request being served.
type reqState struct {
	op   string
	auth *authInfo
	w    *statusWriter
	r    *http.Request
	// bucket and key from the path (key without the leading '/').
	bucket, key string
	reqID       string
}

// statusWriter records the status and the bytes written.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func newID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ServeHTTP serves one S3 request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	rs := &reqState{op: "Unknown", w: sw, r: r, reqID: newID(8)}
	sw.Header().Set("x-amz-request-id", rs.reqID)
	sw.Header().Set("Server", "datenlord-s3")
	var code string
	defer func() {
		if p := recover(); p != nil {
			g.log.Error("s3gw: panic serving a request", "op", rs.op, "panic", p)
			if sw.status == 0 {
				code = codeInternalError
				g.writeError(rs, s3err(codeInternalError, "internal error"))
			}
		}
		if code == "" {
			code = strconv.Itoa(max(sw.status, 200))
		}
		g.m.observe(rs.op, code, time.Since(start), r.ContentLength, sw.bytes)
	}()
	// Parse the path first: its op names the metrics even of a request
	// that fails authentication.
	path := r.URL.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	rs.bucket, rs.key, _ = strings.Cut(path[1:], "/")
	if err := g.serve(rs); err != nil {
		ae := asAPIError(err)
		code = ae.Code
		if sw.status != 0 {
			g.log.Warn("s3gw: error after the response started", "op", rs.op, "err", err)
			return
		}
		g.writeError(rs, ae)
	}
}

func (g *Gateway) serve(rs *reqState) error {
	r := rs.r
	q := r.URL.Query()
	rs.op = opName(r.Method, rs.bucket, rs.key, q, r.Header)
	auth, aerr := verify(r, g.cfg.Secrets, g.cfg.Now())
	if aerr != nil {
		return aerr
	}
	rs.auth = auth
	ctx := r.Context()
	switch rs.op {
	case "ListBuckets":
		return g.listBuckets(ctx, rs)
	case "CreateBucket":
		return g.createBucket(ctx, rs)
	case "DeleteBucket":
		return g.deleteBucket(ctx, rs)
	case "HeadBucket":
		return g.headBucket(ctx, rs)
	case "GetBucketLocation":
		return g.getBucketLocation(ctx, rs)
	case "ListObjectsV2", "ListObjects":
		return g.listObjects(ctx, rs, rs.op == "ListObjectsV2")
	case "ListMultipartUploads":
		return g.listUploads(ctx, rs)
	case "DeleteObjects":
		return g.deleteObjects(ctx, rs)
	case "PutObject":
		return g.putObject(ctx, rs)
	case "CopyObject":
		return g.copyObject(ctx, rs)
	case "GetObject", "HeadObject":
		return g.getObject(ctx, rs, rs.op == "HeadObject")
	case "DeleteObject":
		return g.deleteObject(ctx, rs)
	case "CreateMultipartUpload":
		return g.createUpload(ctx, rs)
	case "UploadPart", "UploadPartCopy":
		return g.uploadPart(ctx, rs, rs.op == "UploadPartCopy")
	case "CompleteMultipartUpload":
		return g.completeUpload(ctx, rs)
	case "AbortMultipartUpload":
		return g.abortUpload(ctx, rs)
	case "ListParts":
		return g.listParts(ctx, rs)
	case "MethodNotAllowed":
		return s3err(codeMethodNotAllowed, "the method %s is not allowed on this resource", r.Method)
	}
	return s3err(codeNotImplemented, "%s is not implemented by this gateway", rs.op)
}

// opName classifies a request into an S3 operation.
func opName(method, bucket, key string, q map[string][]string, h http.Header) string {
	has := func(k string) bool { _, ok := q[k]; return ok }
	switch {
	case bucket == "":
		if method == http.MethodGet {
			return "ListBuckets"
		}
		return "MethodNotAllowed"
	case key == "":
		switch method {
		case http.MethodGet:
			switch {
			case has("location"):
				return "GetBucketLocation"
			case has("uploads"):
				return "ListMultipartUploads"
			case q["list-type"] != nil && len(q["list-type"]) > 0 && q["list-type"][0] == "2":
				return "ListObjectsV2"
			case len(q) == 0 || has("prefix") || has("delimiter") || has("marker") || has("max-keys") || has("encoding-type"):
				return "ListObjects"
			}
			return "GetBucketSubresource"
		case http.MethodPut:
			if len(q) == 0 {
				return "CreateBucket"
			}
			return "PutBucketSubresource"
		case http.MethodDelete:
			if len(q) == 0 {
				return "DeleteBucket"
			}
			return "DeleteBucketSubresource"
		case http.MethodHead:
			return "HeadBucket"
		case http.MethodPost:
			if has("delete") {
				return "DeleteObjects"
			}
			return "PostBucket"
		}
		return "MethodNotAllowed"
	}
	switch method {
	case http.MethodPut:
		if has("partNumber") && has("uploadId") {
			if h.Get("X-Amz-Copy-Source") != "" {
				return "UploadPartCopy"
			}
			return "UploadPart"
		}
		if has("tagging") || has("acl") || has("retention") || has("legal-hold") {
			return "PutObjectSubresource"
		}
		if h.Get("X-Amz-Copy-Source") != "" {
			return "CopyObject"
		}
		return "PutObject"
	case http.MethodGet:
		if has("uploadId") {
			return "ListParts"
		}
		if has("tagging") || has("acl") || has("attributes") || has("torrent") {
			return "GetObjectSubresource"
		}
		return "GetObject"
	case http.MethodHead:
		return "HeadObject"
	case http.MethodDelete:
		if has("uploadId") {
			return "AbortMultipartUpload"
		}
		if has("tagging") {
			return "DeleteObjectSubresource"
		}
		return "DeleteObject"
	case http.MethodPost:
		if has("uploads") {
			return "CreateMultipartUpload"
		}
		if has("uploadId") {
			return "CompleteMultipartUpload"
		}
		return "PostObject"
	}
	return "MethodNotAllowed"
}

// writeError sends an S3 error response.
func (g *Gateway) writeError(rs *reqState, ae *apiError) {
	status := statusOf(ae.Code)
	if status >= 500 {
		g.log.Error("s3gw: request failed", "op", rs.op, "bucket", rs.bucket, "key", rs.key, "err", ae)
	} else {
		g.log.Debug("s3gw: request refused", "op", rs.op, "bucket", rs.bucket, "key", rs.key, "err", ae)
	}
	h := rs.w.Header()
	for _, k := range []string{"ETag", "Last-Modified", "Content-Length", "Content-Range", "Accept-Ranges"} {
		h.Del(k)
	}
	if rs.r.Method == http.MethodHead {
		rs.w.WriteHeader(status)
		return
	}
	res := ae.Resource
	if res == "" {
		res = rs.r.URL.Path
	}
	g.writeXML(rs, status, errorBody{Code: ae.Code, Message: ae.Message, Resource: res, RequestID: rs.reqID})
}

// writeXML sends v as an XML body with status.
func (g *Gateway) writeXML(rs *reqState, status int, v any) error {
	b, err := xml.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode the %s response: %w", rs.op, err)
	}
	h := rs.w.Header()
	h.Set("Content-Type", "application/xml")
	h.Set("Content-Length", strconv.Itoa(len(xml.Header)+len(b)))
	rs.w.WriteHeader(status)
	_, _ = io.WriteString(rs.w, xml.Header)
	_, _ = rs.w.Write(b)
	return nil
}

// metrics are the gateway's Prometheus collectors.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_s3_requests_total",
			Help: "S3 requests by operation and result (HTTP status or S3 error code).",
		}, []string{"op", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "datenlord_s3_request_duration_seconds",
			Help:    "Time to serve an S3 request, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"op"}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "datenlord_s3_received_bytes_total",
			Help: "Request body bytes received by the S3 gateway (as declared by Content-Length).",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "datenlord_s3_sent_bytes_total",
			Help: "Response body bytes sent by the S3 gateway.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.bytesIn, m.bytesOut} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("s3gw: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(op, code string, d time.Duration, in, out int64) {
	m.requests.WithLabelValues(op, code).Inc()
	m.duration.WithLabelValues(op).Observe(d.Seconds())
	if in > 0 {
		m.bytesIn.Add(float64(in))
	}
	m.bytesOut.Add(float64(out))
}
