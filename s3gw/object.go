package s3gw

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"hash"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/meta"
)

const (
	// maxPutSize is the largest single PUT (S3's limit).
	maxPutSize = 5 << 30
	// ioBuf is the size of the copy buffers of bodies.
	ioBuf = 1 << 20
)

// body returns the request payload, decoded and verified as the signature
// declared, and its length (-1: unknown).
func (g *Gateway) body(rs *reqState) (io.Reader, int64, error) {
	r := rs.r
	ph := rs.auth.payloadHash
	switch {
	case strings.HasPrefix(ph, "STREAMING-"):
		n := int64(-1)
		if s := r.Header.Get("X-Amz-Decoded-Content-Length"); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				return nil, 0, s3err(codeInvalidArgument, "x-amz-decoded-content-length %q is not a length", s)
			}
			n = v
		}
		cr, aerr := newChunkedReader(r.Body, ph, rs.auth, r.Header.Get("X-Amz-Trailer"))
		if aerr != nil {
			return nil, 0, aerr
		}
		return cr, n, nil
	case ph == unsignedPayload:
		return r.Body, r.ContentLength, nil
	default:
		return newSHA256Reader(r.Body, ph), r.ContentLength, nil
	}
}

// contentMD5 returns the decoded Content-MD5 header (nil if absent).
func contentMD5(r *http.Request) ([]byte, error) {
	v := r.Header.Get("Content-Md5")
	if v == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != md5.Size {
		return nil, s3err(codeInvalidDigest, "the Content-MD5 you specified is not valid")
	}
	return b, nil
}

// staged is a new object being received: its blocks go to the store as
// they fill, and publish creates and links the file in one metadata
// command (fs.ObjectWriter).
type staged struct {
	w   *fs.ObjectWriter
	md5 hash.Hash
	// limit bounds the object size.
	limit int64
}

// stage starts a new object of about size bytes (-1: unknown).
func (g *Gateway) stage(size int64) *staged {
	return &staged{w: g.files.NewObject(size), md5: md5.New(), limit: maxPutSize}
}

// abort drops a staged object that was not published.
func (s *staged) abort() { s.w.Abort() }

// fill copies src into the staged object; want is the declared length (-1:
// unknown). Errors of src that are S3 errors (signature, hash) are
// returned as they are; others mean the client's body broke off.
func (s *staged) fill(ctx context.Context, src io.Reader, want int64) (int64, error) {
	buf := make([]byte, ioBuf)
	if want >= 0 && want < ioBuf {
		buf = buf[:max(want, 1)]
	}
	var n int64
	for {
		k, err := io.ReadFull(src, buf)
		if k > 0 {
			if _, werr := s.w.Write(ctx, buf[:k]); werr != nil {
				return n, werr
			}
			s.md5.Write(buf[:k])
			n += int64(k)
			if n > s.limit {
				return n, s3err(codeEntityTooLarge, "your proposed upload exceeds the maximum allowed size")
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				return n, ae
			}
			return n, &apiError{Code: codeIncompleteBody, Message: "you did not provide the number of bytes specified by the Content-Length HTTP header", Err: err}
		}
	}
	if want >= 0 && n != want {
		return n, s3err(codeIncompleteBody, "you did not provide the number of bytes specified by the Content-Length HTTP header")
	}
	return n, nil
}

// objectMode is the permission bits of the files objects are.
const objectMode = 0o644

// publish makes a staged object durable with its record om (ETag set) and
// links it as segs under directory b, creating the directories it needs,
// in one metadata command.
func (g *Gateway) publish(ctx context.Context, s *staged, om objectMeta, b meta.Ino, segs []string) (meta.Attr, error) {
	return g.link(ctx, om, b, segs, func(parent meta.Ino, leaf string, opt fs.ObjectOptions) (meta.Attr, error) {
		return s.w.Commit(ctx, parent, leaf, opt)
	})
}

// link records om as the xattr of a new object and links it as segs under
// b through commit (one metadata command), creating the parents first.
func (g *Gateway) link(ctx context.Context, om objectMeta, b meta.Ino, segs []string,
	commit func(parent meta.Ino, leaf string, opt fs.ObjectOptions) (meta.Attr, error)) (meta.Attr, error) {
	om.Version = meta.InitialVersion
	rec, err := encodeMeta(om)
	if err != nil {
		return meta.Attr{}, err
	}
	opt := fs.ObjectOptions{Mode: objectMode, Xattrs: map[string][]byte{xattrObject: rec}}
	leaf := segs[len(segs)-1]
	for attempt := 0; ; attempt++ {
		parent, err := g.mkdirAll(ctx, b, segs[:len(segs)-1])
		var a meta.Attr
		if err == nil {
			a, err = commit(parent, leaf, opt)
		}
		switch {
		case err == nil:
			return a, nil
		case isErrno(err, syscall.ENOENT) && attempt < 3:
			continue // a delete removed an empty parent meanwhile
		case isErrno(err, syscall.EISDIR) || isErrno(err, syscall.EEXIST) || isErrno(err, syscall.ENOTEMPTY) || isErrno(err, syscall.ENOTDIR):
			return meta.Attr{}, &apiError{Code: codeObjectConflict, Message: "the key names a directory (a prefix of other objects); an object cannot have that name", Err: err}
		default:
			return meta.Attr{}, err
		}
	}
}

// requestMeta collects the metadata headers of a request.
func requestMeta(r *http.Request) objectMeta {
	om := objectMeta{ContentType: r.Header.Get("Content-Type")}
	for k, vs := range r.Header {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "x-amz-meta-") && len(vs) > 0 {
			if om.Meta == nil {
				om.Meta = make(map[string]string)
			}
			om.Meta[lk[len("x-amz-meta-"):]] = strings.Join(vs, ",")
		}
	}
	for _, h := range storedHeaders() {
		if v := r.Header.Get(h); v != "" {
			if om.Headers == nil {
				om.Headers = make(map[string]string)
			}
			om.Headers[h] = v
		}
	}
	return om
}

// putObject is PutObject; a key ending in '/' creates a directory.
func (g *Gateway) putObject(ctx context.Context, rs *reqState) error {
	b, segs, dirKey, err := g.target(ctx, rs)
	if err != nil {
		return err
	}
	src, size, err := g.body(rs)
	if err != nil {
		return err
	}
	if size > maxPutSize {
		return s3err(codeEntityTooLarge, "your proposed upload exceeds the maximum allowed size")
	}
	wantMD5, err := contentMD5(rs.r)
	if err != nil {
		return err
	}
	if rs.r.Header.Get("If-None-Match") == "*" {
		if _, err := g.resolve(ctx, b, rs.key); err == nil {
			return s3err(codePreconditionFailed, "at least one of the preconditions you specified did not hold")
		}
	}
	if dirKey {
		n, err := io.Copy(io.Discard, io.LimitReader(src, 1))
		if err != nil {
			return asAPIError(err)
		}
		if n > 0 {
			return s3err(codeInvalidArgument, "a key ending in '/' is a directory and cannot have content")
		}
		if _, err := g.mkdirAll(ctx, b, segs); err != nil {
			return err
		}
		rs.w.Header().Set("ETag", `"`+emptyMD5+`"`)
		rs.w.WriteHeader(http.StatusOK)
		return nil
	}
	st := g.stage(size)
	published := false
	defer func() {
		if !published {
			st.abort()
		}
	}()
	if _, err := st.fill(ctx, src, size); err != nil {
		return err
	}
	// The last block goes to the store while the commit is prepared.
	st.w.Flush(ctx)
	sum := st.md5.Sum(nil)
	if wantMD5 != nil && !bytes.Equal(sum, wantMD5) {
		return s3err(codeBadDigest, "the Content-MD5 you specified did not match what we received")
	}
	om := requestMeta(rs.r)
	om.ETag = hex.EncodeToString(sum)
	if _, err := g.publish(ctx, st, om, b, segs); err != nil {
		return err
	}
	published = true
	rs.w.Header().Set("ETag", `"`+om.ETag+`"`)
	rs.w.WriteHeader(http.StatusOK)
	return nil
}

// byteRange is a resolved Range: [start, start+length).
type byteRange struct{ start, length int64 }

// parseRange resolves a Range header against size. ok is false when the
// header is absent or not a single byte range (the whole object is sent,
// as S3 does); an unsatisfiable range is InvalidRange.
func parseRange(h string, size int64) (br byteRange, ok bool, err error) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return byteRange{}, false, nil
	}
	first, last, found := strings.Cut(spec, "-")
	if !found {
		return byteRange{}, false, nil
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	invalid := s3err(codeInvalidRange, "the requested range is not satisfiable")
	if first == "" {
		n, perr := strconv.ParseInt(last, 10, 64)
		if perr != nil || n < 0 {
			return byteRange{}, false, nil
		}
		if n == 0 || size == 0 {
			return byteRange{}, false, invalid
		}
		n = min(n, size)
		return byteRange{size - n, n}, true, nil
	}
	s, perr := strconv.ParseInt(first, 10, 64)
	if perr != nil || s < 0 {
		return byteRange{}, false, nil
	}
	e := size - 1
	if last != "" {
		v, perr := strconv.ParseInt(last, 10, 64)
		if perr != nil || v < s {
			return byteRange{}, false, nil
		}
		e = min(v, size-1)
	}
	if s >= size {
		return byteRange{}, false, invalid
	}
	return byteRange{s, e - s + 1}, true, nil
}

// etagMatch reports whether an If-Match/If-None-Match list matches etag.
func etagMatch(list, etag string) bool {
	for c := range strings.SplitSeq(list, ",") {
		c = strings.TrimSpace(c)
		c = strings.TrimPrefix(c, "W/")
		if c == "*" || strings.Trim(c, `"`) == etag {
			return true
		}
	}
	return false
}

// preconditions evaluates the conditional headers (prefix "" for
// GET/HEAD, "X-Amz-Copy-Source-" for a copy source): 0 to go on, else
// 304 or 412.
func preconditions(h http.Header, prefix string, o *object) int {
	mod := o.lastModified().Truncate(time.Second)
	etag := o.om.ETag
	im, inm := h.Get(prefix+"If-Match"), h.Get(prefix+"If-None-Match")
	if im != "" {
		if !etagMatch(im, etag) {
			return http.StatusPreconditionFailed
		}
	} else if v := h.Get(prefix + "If-Unmodified-Since"); v != "" {
		if t, err := http.ParseTime(v); err == nil && mod.After(t) {
			return http.StatusPreconditionFailed
		}
	}
	notModified := http.StatusNotModified
	if prefix != "" {
		notModified = http.StatusPreconditionFailed
	}
	if inm != "" {
		if etagMatch(inm, etag) {
			return notModified
		}
	} else if v := h.Get(prefix + "If-Modified-Since"); v != "" {
		if t, err := http.ParseTime(v); err == nil && !mod.After(t) {
			return notModified
		}
	}
	return 0
}

// setObjectHeaders sets the headers that describe o.
func setObjectHeaders(h http.Header, o *object) {
	h.Set("ETag", `"`+o.om.ETag+`"`)
	h.Set("Last-Modified", o.lastModified().Format(http.TimeFormat))
	ct := o.om.ContentType
	if ct == "" {
		ct = "binary/octet-stream"
	}
	h.Set("Content-Type", ct)
	h.Set("Accept-Ranges", "bytes")
	for k, v := range o.om.Meta {
		h["X-Amz-Meta-"+k] = []string{v}
	}
	for k, v := range o.om.Headers {
		h.Set(k, v)
	}
	if n := strings.Count(o.om.ETag, "-"); n == 1 {
		if _, parts, ok := strings.Cut(o.om.ETag, "-"); ok {
			h.Set("x-amz-mp-parts-count", parts)
		}
	}
}

// getObject is GetObject and HeadObject.
func (g *Gateway) getObject(ctx context.Context, rs *reqState, head bool) error {
	b, segs, dirKey, err := g.target(ctx, rs)
	if err != nil {
		return err
	}
	a, err := g.walk(ctx, b, segs)
	if err != nil {
		return err
	}
	if a.IsDir() != dirKey || !a.IsDir() && !a.IsRegular() {
		return s3err(codeNoSuchKey, "the specified key does not exist")
	}
	var rd *fs.Reader
	if a.IsRegular() {
		rd, err = g.files.Open(ctx, a.Ino)
		if err != nil {
			if isErrno(err, syscall.ENOENT) {
				return s3err(codeNoSuchKey, "the specified key does not exist")
			}
			return err
		}
		defer rd.Close()
		a = rd.Attr()
	}
	o := g.describe(ctx, a, segs[len(segs)-1])
	h := rs.w.Header()
	setObjectHeaders(h, o)
	if st := preconditions(rs.r.Header, "", o); st != 0 {
		if st == http.StatusPreconditionFailed {
			return s3err(codePreconditionFailed, "at least one of the preconditions you specified did not hold")
		}
		h.Del("Content-Type")
		rs.w.WriteHeader(st)
		return nil
	}
	size := int64(o.attr.Size)
	br, partial := byteRange{0, size}, false
	if rh := rs.r.Header.Get("Range"); rh != "" {
		var err error
		br, partial, err = parseRange(rh, size)
		if err != nil {
			h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			return err
		}
		if !partial {
			br = byteRange{0, size}
		}
	}
	h.Set("Content-Length", strconv.FormatInt(br.length, 10))
	status := http.StatusOK
	if partial {
		h.Set("Content-Range", "bytes "+strconv.FormatInt(br.start, 10)+"-"+
			strconv.FormatInt(br.start+br.length-1, 10)+"/"+strconv.FormatInt(size, 10))
		status = http.StatusPartialContent
	}
	rs.w.WriteHeader(status)
	if head || br.length == 0 || rd == nil {
		return nil
	}
	rd.ReadAhead(uint64(br.start))
	return g.sendRange(ctx, rs.w, rd, uint64(br.start), uint64(br.start+br.length))
}

// pathInos walks segs under b, returning the directory inode at each
// level (b first) and the last entry's attributes.
func (g *Gateway) pathInos(ctx context.Context, b meta.Ino, segs []string) ([]meta.Ino, meta.Attr, error) {
	inos := []meta.Ino{b}
	var a meta.Attr
	for i, s := range segs {
		var err error
		a, err = g.files.Lookup(ctx, inos[i], s)
		if err != nil {
			return inos, a, err
		}
		if i < len(segs)-1 {
			if !a.IsDir() {
				return inos, a, syscall.ENOTDIR
			}
			inos = append(inos, a.Ino)
		}
	}
	return inos, a, nil
}

// deleteKey deletes an object and the directories it leaves empty. A
// missing key is no error (S3 semantics).
func (g *Gateway) deleteKey(ctx context.Context, b meta.Ino, key string) error {
	segs, dirKey, aerr := splitKey(key)
	if aerr != nil {
		return aerr
	}
	inos, a, err := g.pathInos(ctx, b, segs)
	if err != nil {
		if isErrno(err, syscall.ENOENT) || isErrno(err, syscall.ENOTDIR) || isErrno(err, syscall.ENAMETOOLONG) {
			return nil
		}
		return err
	}
	parent, leaf := inos[len(inos)-1], segs[len(segs)-1]
	switch {
	case dirKey && a.IsDir():
		if err := g.files.Rmdir(ctx, parent, leaf); err != nil {
			if isErrno(err, syscall.ENOTEMPTY) || isErrno(err, syscall.ENOENT) {
				return nil // a prefix of other objects: there is no marker to delete
			}
			return err
		}
	case !dirKey && !a.IsDir():
		if err := g.files.Unlink(ctx, parent, leaf); err != nil && !isErrno(err, syscall.ENOENT) {
			return err
		}
	default:
		return nil
	}
	// Remove the parents left empty, up to the bucket.
	for i := len(segs) - 2; i >= 0; i-- {
		if err := g.files.Rmdir(ctx, inos[i], segs[i]); err != nil {
			break
		}
	}
	return nil
}

// deleteObject is DeleteObject.
func (g *Gateway) deleteObject(ctx context.Context, rs *reqState) error {
	b, err := g.bucketIno(ctx, rs.bucket)
	if err != nil {
		return err
	}
	if err := g.deleteKey(ctx, b, rs.key); err != nil {
		return err
	}
	rs.w.WriteHeader(http.StatusNoContent)
	return nil
}

// copySource parses x-amz-copy-source into bucket and key.
func copySource(v string) (bucket, key string, err error) {
	v, _, _ = strings.Cut(v, "?") // versionId: there is one version
	v, uerr := url.PathUnescape(v)
	if uerr != nil {
		return "", "", s3err(codeInvalidArgument, "x-amz-copy-source is not URL-encoded correctly")
	}
	v = strings.TrimPrefix(v, "/")
	bucket, key, ok := strings.Cut(v, "/")
	if !ok || bucket == "" || key == "" {
		return "", "", s3err(codeInvalidArgument, "x-amz-copy-source must be BUCKET/KEY")
	}
	return bucket, key, nil
}

// openSource opens the copy source of a request after its conditions.
func (g *Gateway) openSource(ctx context.Context, rs *reqState) (*object, *fs.Reader, error) {
	sb, sk, err := copySource(rs.r.Header.Get("X-Amz-Copy-Source"))
	if err != nil {
		return nil, nil, err
	}
	sbIno, err := g.bucketIno(ctx, sb)
	if err != nil {
		return nil, nil, err
	}
	segs, dirKey, aerr := splitKey(sk)
	if aerr != nil {
		return nil, nil, aerr
	}
	a, err := g.walk(ctx, sbIno, segs)
	if err != nil {
		return nil, nil, err
	}
	if dirKey || !a.IsRegular() {
		return nil, nil, s3err(codeNoSuchKey, "the specified copy source does not exist")
	}
	rd, err := g.files.Open(ctx, a.Ino)
	if err != nil {
		return nil, nil, err
	}
	o := g.describe(ctx, rd.Attr(), segs[len(segs)-1])
	if preconditions(rs.r.Header, "X-Amz-Copy-Source-", o) != 0 {
		rd.Close()
		return nil, nil, s3err(codePreconditionFailed, "at least one of the preconditions you specified did not hold")
	}
	return o, rd, nil
}

// readerFrom adapts an fs.Reader to io.Reader over [off, end).
type readerFrom struct {
	ctx      context.Context
	rd       *fs.Reader
	off, end uint64
}

func (r *readerFrom) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	p = p[:min(uint64(len(p)), r.end-r.off)]
	n, err := r.rd.ReadAt(r.ctx, p, r.off)
	r.off += uint64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// copyObjectResult is the body of CopyObject and UploadPartCopy.
type copyObjectResult struct {
	XMLName      xml.Name
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
}

// copyObject is CopyObject.
func (g *Gateway) copyObject(ctx context.Context, rs *reqState) error {
	b, segs, dirKey, err := g.target(ctx, rs)
	if err != nil {
		return err
	}
	if dirKey {
		return s3err(codeInvalidArgument, "cannot copy onto a directory key")
	}
	o, rd, err := g.openSource(ctx, rs)
	if err != nil {
		return err
	}
	defer rd.Close()
	replace := strings.EqualFold(rs.r.Header.Get("X-Amz-Metadata-Directive"), "REPLACE")
	sb, sk, _ := copySource(rs.r.Header.Get("X-Amz-Copy-Source"))
	if sb == rs.bucket && sk == rs.key && !replace {
		return s3err(codeInvalidRequest, "this copy request is illegal because it is trying to copy an object to itself without changing the object's metadata")
	}
	st := g.stage(int64(o.attr.Size))
	published := false
	defer func() {
		if !published {
			st.abort()
		}
	}()
	if _, err := st.fill(ctx, &readerFrom{ctx: ctx, rd: rd, end: o.attr.Size}, int64(o.attr.Size)); err != nil {
		return err
	}
	om := o.om
	if replace {
		om = requestMeta(rs.r)
	}
	om.ETag = hex.EncodeToString(st.md5.Sum(nil))
	a, err := g.publish(ctx, st, om, b, segs)
	if err != nil {
		return err
	}
	published = true
	return g.writeXML(rs, http.StatusOK, copyObjectResult{
		XMLName:      xml.Name{Space: s3NS, Local: "CopyObjectResult"},
		LastModified: time.Unix(0, a.Mtime).UTC().Format(time.RFC3339Nano),
		ETag:         `"` + om.ETag + `"`,
	})
}
