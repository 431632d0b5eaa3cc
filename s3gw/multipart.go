package s3gw

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/meta"
)

// Multipart uploads live in .datenlord-s3/uploads/ID, a directory whose
// xattrUpload names the bucket, key and metadata of the object; part N is
// the file "%05d" in it, written like an object (with its MD5 ETag
// recorded). CompleteMultipartUpload moves the blocks
// of the parts, in order, into the new object with one metadata command
// when the parts are block aligned (see assemble), else copies them into a
// new staged object and publishes it like PutObject; then it removes the
// upload directory (the emptied parts free no blocks).

const (
	maxPartNumber = 10000
	// minPartSize is the least size of every part but the last.
	minPartSize = 5 << 20
	// maxObjectSize bounds a multipart object (S3: 5 TiB).
	maxObjectSize = 5 << 40
	// keepAliveEvery is how often a long completion sends a space.
	keepAliveEvery = 10 * time.Second
)

// uploadRecord is the xattrUpload of an upload directory.
type uploadRecord struct {
	Bucket    string     `json:"bucket"`
	Key       string     `json:"key"`
	Meta      objectMeta `json:"meta"`
	Initiated int64      `json:"initiated"`
}

func partName(n int) string { return fmt.Sprintf("%05d", n) }

type initiateResult struct {
	XMLName  xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ InitiateMultipartUploadResult"`
	Bucket   string   `xml:"Bucket"`
	Key      string   `xml:"Key"`
	UploadID string   `xml:"UploadId"`
}

// createUpload is CreateMultipartUpload.
func (g *Gateway) createUpload(ctx context.Context, rs *reqState) error {
	if _, err := g.bucketIno(ctx, rs.bucket); err != nil {
		return err
	}
	if _, dirKey, aerr := splitKey(rs.key); aerr != nil {
		return aerr
	} else if dirKey {
		return s3err(codeInvalidArgument, "a key ending in '/' is a directory and cannot be uploaded in parts")
	}
	rec := uploadRecord{Bucket: rs.bucket, Key: rs.key, Meta: requestMeta(rs.r), Initiated: time.Now().UnixNano()}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode the upload record: %w", err)
	}
	if len(b) > meta.MaxXattrSize {
		return s3err("MetadataTooLarge", "the object's metadata headers are too large")
	}
	id := newID(16)
	a, err := g.files.Mkdir(ctx, g.upIno, id, 0o700)
	if err != nil {
		return err
	}
	if err := g.files.SetXattr(ctx, a.Ino, xattrUpload, b); err != nil {
		_ = g.files.Rmdir(context.WithoutCancel(ctx), g.upIno, id)
		return err
	}
	return g.writeXML(rs, http.StatusOK, initiateResult{Bucket: rs.bucket, Key: rs.key, UploadID: id})
}

// upload resolves the uploadId of a request for its bucket and key.
func (g *Gateway) upload(ctx context.Context, rs *reqState) (meta.Ino, uploadRecord, error) {
	id := rs.r.URL.Query().Get("uploadId")
	noSuch := &apiError{Code: codeNoSuchUpload, Message: "the specified multipart upload does not exist; the upload ID might be invalid, or the upload might have been aborted or completed", Resource: id}
	if len(id) != 32 {
		return 0, uploadRecord{}, noSuch
	}
	if _, err := hex.DecodeString(id); err != nil {
		return 0, uploadRecord{}, noSuch
	}
	a, err := g.files.Lookup(ctx, g.upIno, id)
	if err != nil {
		if isErrno(err, syscall.ENOENT) {
			return 0, uploadRecord{}, noSuch
		}
		return 0, uploadRecord{}, err
	}
	v, err := g.files.GetXattr(ctx, a.Ino, xattrUpload)
	var rec uploadRecord
	if err != nil || json.Unmarshal(v, &rec) != nil || rec.Bucket != rs.bucket || rec.Key != rs.key {
		return 0, uploadRecord{}, noSuch
	}
	return a.Ino, rec, nil
}

func partNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxPartNumber {
		return 0, s3err(codeInvalidArgument, "part number must be an integer between 1 and %d", maxPartNumber)
	}
	return n, nil
}

type copyPartResult struct {
	XMLName      xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ CopyPartResult"`
	LastModified string   `xml:"LastModified"`
	ETag         string   `xml:"ETag"`
}

// uploadPart is UploadPart and UploadPartCopy.
func (g *Gateway) uploadPart(ctx context.Context, rs *reqState, isCopy bool) error {
	if _, err := g.bucketIno(ctx, rs.bucket); err != nil {
		return err
	}
	n, err := partNumber(rs.r.URL.Query().Get("partNumber"))
	if err != nil {
		return err
	}
	dir, _, err := g.upload(ctx, rs)
	if err != nil {
		return err
	}
	var src io.Reader
	var size int64
	var wantMD5 []byte
	if isCopy {
		o, rd, err := g.openSource(ctx, rs)
		if err != nil {
			return err
		}
		defer rd.Close()
		br := byteRange{0, int64(o.attr.Size)}
		if h := rs.r.Header.Get("X-Amz-Copy-Source-Range"); h != "" {
			r, ok, err := parseRange(h, int64(o.attr.Size))
			if err != nil || !ok {
				return s3err(codeInvalidArgument, "the x-amz-copy-source-range %q is not a satisfiable range bytes=FIRST-LAST", h)
			}
			br = r
		}
		src = &readerFrom{ctx: ctx, rd: rd, off: uint64(br.start), end: uint64(br.start + br.length)}
		size = br.length
	} else {
		src, size, err = g.body(rs)
		if err != nil {
			return err
		}
		if wantMD5, err = contentMD5(rs.r); err != nil {
			return err
		}
	}
	if size > maxPutSize {
		return s3err(codeEntityTooLarge, "a part is at most 5 GiB")
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
	st.w.Flush(ctx) // the last block goes to the store meanwhile
	sum := st.md5.Sum(nil)
	if wantMD5 != nil && string(sum) != string(wantMD5) {
		return s3err(codeBadDigest, "the Content-MD5 you specified did not match what we received")
	}
	om := objectMeta{ETag: hex.EncodeToString(sum)}
	a, err := g.publish(ctx, st, om, dir, []string{partName(n)})
	if err != nil {
		if isErrno(err, syscall.ENOENT) {
			return s3err(codeNoSuchUpload, "the multipart upload was aborted or completed meanwhile")
		}
		return err
	}
	published = true
	if isCopy {
		return g.writeXML(rs, http.StatusOK, copyPartResult{LastModified: s3Time(a.Mtime), ETag: `"` + om.ETag + `"`})
	}
	rs.w.Header().Set("ETag", `"`+om.ETag+`"`)
	rs.w.WriteHeader(http.StatusOK)
	return nil
}

// part is a stored part.
type part struct {
	number int
	obj    *object
}

// parts lists the parts of an upload in number order.
func (g *Gateway) parts(ctx context.Context, dir meta.Ino) ([]part, error) {
	ents, err := g.readAllDir(ctx, dir)
	if err != nil {
		return nil, err
	}
	var ps []part
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name)
		if err != nil || e.Mode&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		a, err := g.files.GetAttr(ctx, e.Ino)
		if err != nil {
			continue
		}
		ps = append(ps, part{number: n, obj: g.describe(ctx, a, e.Name)})
	}
	slices.SortFunc(ps, func(a, b part) int { return a.number - b.number })
	return ps, nil
}

type completeRequest struct {
	XMLName xml.Name `xml:"CompleteMultipartUpload"`
	Parts   []struct {
		PartNumber int    `xml:"PartNumber"`
		ETag       string `xml:"ETag"`
	} `xml:"Part"`
}

type completeResult struct {
	XMLName  xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ CompleteMultipartUploadResult"`
	Location string   `xml:"Location"`
	Bucket   string   `xml:"Bucket"`
	Key      string   `xml:"Key"`
	ETag     string   `xml:"ETag"`
}

// completeUpload is CompleteMultipartUpload. Once the request is
// validated the response starts (200) and a space is sent every
// keepAliveEvery while parts are copied; a later failure is an Error
// document in that 200 response, as S3 does.
func (g *Gateway) completeUpload(ctx context.Context, rs *reqState) error {
	b, segs, _, err := g.target(ctx, rs)
	if err != nil {
		return err
	}
	dir, rec, err := g.upload(ctx, rs)
	if err != nil {
		return err
	}
	var req completeRequest
	if err := g.readXML(rs, &req); err != nil {
		return err
	}
	if len(req.Parts) == 0 {
		return s3err(codeMalformedXML, "you must specify at least one part")
	}
	stored, err := g.parts(ctx, dir)
	if err != nil {
		return err
	}
	byNum := make(map[int]*object, len(stored))
	for _, p := range stored {
		byNum[p.number] = p.obj
	}
	var sums []byte
	var total int64
	chosen := make([]*object, len(req.Parts))
	for i, p := range req.Parts {
		if i > 0 && p.PartNumber <= req.Parts[i-1].PartNumber {
			return s3err(codeInvalidPartOrder, "the list of parts was not in ascending order; parts must be ordered by part number")
		}
	}
	for _, p := range req.Parts {
		o := byNum[p.PartNumber]
		etag := strings.Trim(strings.TrimSpace(p.ETag), `"`)
		if o == nil || etag != o.om.ETag {
			return s3err(codeInvalidPart, "part %d could not be found or its ETag does not match", p.PartNumber)
		}
	}
	for i, p := range req.Parts {
		o := byNum[p.PartNumber]
		if i < len(req.Parts)-1 && o.attr.Size < minPartSize {
			return s3err(codeEntityTooSmall, "your proposed upload is smaller than the minimum allowed object size: part %d has %d bytes", p.PartNumber, o.attr.Size)
		}
		raw, err := hex.DecodeString(o.om.ETag)
		if err != nil || len(raw) != md5.Size {
			return s3err(codeInvalidPart, "part %d has no MD5 ETag", p.PartNumber)
		}
		sums = append(sums, raw...)
		total += int64(o.attr.Size)
		chosen[i] = o
	}
	if total > maxObjectSize {
		return s3err(codeEntityTooLarge, "your proposed upload exceeds the maximum allowed size")
	}
	whole := md5.Sum(sums)
	etag := hex.EncodeToString(whole[:]) + "-" + strconv.Itoa(len(req.Parts))

	// From here on the response may have started.
	var mu sync.Mutex
	started := false
	start := func() {
		if !started {
			started = true
			rs.w.Header().Set("Content-Type", "application/xml")
			rs.w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(rs.w, xml.Header)
		}
	}
	stop := make(chan struct{})
	var keep sync.WaitGroup
	keep.Go(func() {
		t := time.NewTicker(keepAliveEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				mu.Lock()
				start()
				_, _ = io.WriteString(rs.w, " ")
				rs.w.Flush()
				mu.Unlock()
			}
		}
	})
	err = g.assemble(ctx, chosen, rec, etag, b, segs)
	close(stop)
	keep.Wait()
	if err == nil {
		if _, rerr := g.removeTree(context.WithoutCancel(ctx), dir); rerr == nil {
			_ = g.files.Rmdir(context.WithoutCancel(ctx), g.upIno, rs.r.URL.Query().Get("uploadId"))
		} else {
			g.log.Warn("s3gw: remove a completed upload", "err", rerr)
		}
	}
	if !started {
		if err != nil {
			return err
		}
		return g.writeXML(rs, http.StatusOK, completeResult{Location: "/" + rs.bucket + "/" + rs.key,
			Bucket: rs.bucket, Key: rs.key, ETag: `"` + etag + `"`})
	}
	var v any = completeResult{Location: "/" + rs.bucket + "/" + rs.key, Bucket: rs.bucket, Key: rs.key, ETag: `"` + etag + `"`}
	if err != nil {
		ae := asAPIError(err)
		g.log.Warn("s3gw: complete multipart upload failed after the response started", "err", err)
		v = errorBody{Code: ae.Code, Message: ae.Message, Resource: rs.r.URL.Path, RequestID: rs.reqID}
	}
	out, merr := xml.Marshal(v)
	if merr != nil {
		return fmt.Errorf("encode the completion: %w", merr)
	}
	_, _ = rs.w.Write(out)
	return nil
}

// assemble publishes the parts as one object. When every part but the
// last is a whole number of blocks long (the usual case: clients send
// parts of some MiB, blocks are 512 KiB) the parts' blocks are moved into
// the new file by one metadata command and no data is copied; otherwise,
// or if a part changed meanwhile, the parts are copied into a new object.
func (g *Gateway) assemble(ctx context.Context, parts []*object, rec uploadRecord, etag string, b meta.Ino, segs []string) error {
	om := rec.Meta
	om.ETag = etag
	if refs, size, ok := g.movable(parts); ok {
		_, err := g.link(ctx, om, b, segs, func(parent meta.Ino, leaf string, opt fs.ObjectOptions) (meta.Attr, error) {
			return g.files.Assemble(ctx, refs, size, parent, leaf, opt)
		})
		if err == nil || !isErrno(err, syscall.ESTALE) && !isErrno(err, syscall.EINVAL) {
			return err
		}
		g.log.Debug("s3gw: moving the parts failed; copying them", "err", err)
	}
	return g.assembleCopy(ctx, parts, om, b, segs)
}

// movable returns the parts as meta.ObjectParts and their total size if
// their blocks can be moved into one file: every part but the last is
// block aligned.
func (g *Gateway) movable(parts []*object) ([]meta.ObjectPart, uint64, bool) {
	bs := uint64(g.files.BlockSize())
	refs := make([]meta.ObjectPart, len(parts))
	var size uint64
	for i, p := range parts {
		if i < len(parts)-1 && p.attr.Size%bs != 0 {
			return nil, 0, false
		}
		refs[i] = meta.ObjectPart{Ino: p.attr.Ino, Version: p.attr.Version}
		size += p.attr.Size
	}
	return refs, size, true
}

// assembleCopy copies the parts into a new object and publishes it.
func (g *Gateway) assembleCopy(ctx context.Context, parts []*object, om objectMeta, b meta.Ino, segs []string) error {
	var total int64
	for _, p := range parts {
		total += int64(p.attr.Size)
	}
	st := g.stage(total)
	st.limit = maxObjectSize
	published := false
	defer func() {
		if !published {
			st.abort()
		}
	}()
	for _, p := range parts {
		rd, err := g.files.Open(ctx, p.attr.Ino)
		if err != nil {
			return err
		}
		_, err = st.fill(ctx, &readerFrom{ctx: ctx, rd: rd, end: p.attr.Size}, int64(p.attr.Size))
		rd.Close()
		if err != nil {
			return err
		}
	}
	if _, err := g.publish(ctx, st, om, b, segs); err != nil {
		return err
	}
	published = true
	return nil
}

// abortUpload is AbortMultipartUpload.
func (g *Gateway) abortUpload(ctx context.Context, rs *reqState) error {
	dir, _, err := g.upload(ctx, rs)
	if err != nil {
		return err
	}
	if _, err := g.removeTree(ctx, dir); err != nil {
		return err
	}
	if err := g.files.Rmdir(ctx, g.upIno, rs.r.URL.Query().Get("uploadId")); err != nil && !isErrno(err, syscall.ENOENT) {
		return err
	}
	rs.w.WriteHeader(http.StatusNoContent)
	return nil
}

type partEntry struct {
	PartNumber   int    `xml:"PartNumber"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
}

type listPartsResult struct {
	XMLName              xml.Name    `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListPartsResult"`
	Bucket               string      `xml:"Bucket"`
	Key                  string      `xml:"Key"`
	UploadID             string      `xml:"UploadId"`
	Initiator            owner       `xml:"Initiator"`
	Owner                owner       `xml:"Owner"`
	StorageClass         string      `xml:"StorageClass"`
	PartNumberMarker     int         `xml:"PartNumberMarker"`
	NextPartNumberMarker int         `xml:"NextPartNumberMarker"`
	MaxParts             int         `xml:"MaxParts"`
	IsTruncated          bool        `xml:"IsTruncated"`
	Parts                []partEntry `xml:"Part"`
}

// listParts is ListParts.
func (g *Gateway) listParts(ctx context.Context, rs *reqState) error {
	dir, _, err := g.upload(ctx, rs)
	if err != nil {
		return err
	}
	q := rs.r.URL.Query()
	maxParts, marker := 1000, 0
	if s := q.Get("max-parts"); s != "" {
		if maxParts, err = strconv.Atoi(s); err != nil || maxParts < 0 {
			return s3err(codeInvalidArgument, "max-parts must be a non-negative integer")
		}
		maxParts = min(maxParts, 1000)
	}
	if s := q.Get("part-number-marker"); s != "" {
		if marker, err = strconv.Atoi(s); err != nil || marker < 0 {
			return s3err(codeInvalidArgument, "part-number-marker must be a non-negative integer")
		}
	}
	ps, err := g.parts(ctx, dir)
	if err != nil {
		return err
	}
	o := owner{ID: rs.auth.accessKey, DisplayName: rs.auth.accessKey}
	res := listPartsResult{Bucket: rs.bucket, Key: rs.key, UploadID: q.Get("uploadId"), Initiator: o, Owner: o,
		StorageClass: "STANDARD", PartNumberMarker: marker, MaxParts: maxParts}
	for _, p := range ps {
		if p.number <= marker {
			continue
		}
		if len(res.Parts) == maxParts {
			res.IsTruncated = true
			break
		}
		res.Parts = append(res.Parts, partEntry{PartNumber: p.number, LastModified: s3Time(p.obj.attr.Mtime),
			ETag: `"` + p.obj.om.ETag + `"`, Size: int64(p.obj.attr.Size)})
		res.NextPartNumberMarker = p.number
	}
	return g.writeXML(rs, http.StatusOK, res)
}

type uploadEntry struct {
	Key          string `xml:"Key"`
	UploadID     string `xml:"UploadId"`
	Initiator    owner  `xml:"Initiator"`
	Owner        owner  `xml:"Owner"`
	StorageClass string `xml:"StorageClass"`
	Initiated    string `xml:"Initiated"`
}

type listUploadsResult struct {
	XMLName            xml.Name      `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListMultipartUploadsResult"`
	Bucket             string        `xml:"Bucket"`
	KeyMarker          string        `xml:"KeyMarker"`
	UploadIDMarker     string        `xml:"UploadIdMarker"`
	NextKeyMarker      string        `xml:"NextKeyMarker"`
	NextUploadIDMarker string        `xml:"NextUploadIdMarker"`
	Prefix             string        `xml:"Prefix"`
	MaxUploads         int           `xml:"MaxUploads"`
	IsTruncated        bool          `xml:"IsTruncated"`
	Uploads            []uploadEntry `xml:"Upload"`
}

// listUploads is ListMultipartUploads (one page of up to max-uploads,
// sorted by key and initiation; markers are honoured, delimiters are not).
func (g *Gateway) listUploads(ctx context.Context, rs *reqState) error {
	if _, err := g.bucketIno(ctx, rs.bucket); err != nil {
		return err
	}
	q := rs.r.URL.Query()
	maxUp := 1000
	if s := q.Get("max-uploads"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return s3err(codeInvalidArgument, "max-uploads must be a non-negative integer")
		}
		maxUp = min(n, 1000)
	}
	ents, err := g.readAllDir(ctx, g.upIno)
	if err != nil {
		return err
	}
	prefix, keyMarker, idMarker := q.Get("prefix"), q.Get("key-marker"), q.Get("upload-id-marker")
	o := owner{ID: rs.auth.accessKey, DisplayName: rs.auth.accessKey}
	var all []uploadEntry
	for _, e := range ents {
		v, err := g.files.GetXattr(ctx, e.Ino, xattrUpload)
		var rec uploadRecord
		if err != nil || json.Unmarshal(v, &rec) != nil || rec.Bucket != rs.bucket || !strings.HasPrefix(rec.Key, prefix) {
			continue
		}
		if rec.Key < keyMarker || rec.Key == keyMarker && (idMarker == "" || e.Name <= idMarker) {
			continue
		}
		all = append(all, uploadEntry{Key: rec.Key, UploadID: e.Name, Initiator: o, Owner: o,
			StorageClass: "STANDARD", Initiated: s3Time(rec.Initiated)})
	}
	slices.SortFunc(all, func(a, b uploadEntry) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.UploadID, b.UploadID)
	})
	res := listUploadsResult{Bucket: rs.bucket, KeyMarker: keyMarker, UploadIDMarker: idMarker, Prefix: prefix, MaxUploads: maxUp}
	if len(all) > maxUp {
		all, res.IsTruncated = all[:maxUp], true
	}
	res.Uploads = all
	if res.IsTruncated && len(all) > 0 {
		res.NextKeyMarker, res.NextUploadIDMarker = all[len(all)-1].Key, all[len(all)-1].UploadID
	}
	return g.writeXML(rs, http.StatusOK, res)
}
