package s3gw

import (
	"context"
	"encoding/base64"
	"encoding/xml"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/datenlord/datenlord-go/meta"
)

// s3NS is the XML namespace of S3 responses.
const s3NS = "http://s3.amazonaws.com/doc/2006-03-01/"

// maxXMLBody bounds the XML request bodies the gateway parses.
const maxXMLBody = 4 << 20

type owner struct {
	ID          string `xml:"ID"`
	DisplayName string `xml:"DisplayName"`
}

type bucketEntry struct {
	Name         string `xml:"Name"`
	CreationDate string `xml:"CreationDate"`
}

type listAllMyBucketsResult struct {
	XMLName xml.Name      `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListAllMyBucketsResult"`
	Owner   owner         `xml:"Owner"`
	Buckets []bucketEntry `xml:"Buckets>Bucket"`
}

func s3Time(ns int64) string { return time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000Z") }

// listBuckets is ListBuckets: the top-level directories with valid
// bucket names.
func (g *Gateway) listBuckets(ctx context.Context, rs *reqState) error {
	ents, err := g.readAllDir(ctx, meta.RootIno)
	if err != nil {
		return err
	}
	res := listAllMyBucketsResult{Owner: owner{ID: rs.auth.accessKey, DisplayName: rs.auth.accessKey}}
	for _, e := range ents {
		if e.Mode&syscall.S_IFMT != syscall.S_IFDIR || !validBucketName(e.Name) {
			continue
		}
		a, err := g.files.GetAttr(ctx, e.Ino)
		if err != nil {
			continue // removed meanwhile
		}
		res.Buckets = append(res.Buckets, bucketEntry{Name: e.Name, CreationDate: s3Time(a.Ctime)})
	}
	return g.writeXML(rs, http.StatusOK, res)
}

// createBucket is CreateBucket (any location constraint is accepted).
func (g *Gateway) createBucket(ctx context.Context, rs *reqState) error {
	if !validBucketName(rs.bucket) {
		return &apiError{Code: codeInvalidBucketName, Message: "the specified bucket is not valid", Resource: rs.bucket}
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(rs.r.Body, maxXMLBody)); err != nil {
		return asAPIError(err)
	}
	if _, err := g.files.Lookup(ctx, meta.RootIno, rs.bucket); err == nil {
		return &apiError{Code: codeBucketAlreadyOwned, Message: "your previous request to create the named bucket succeeded and you already own it", Resource: rs.bucket}
	}
	if _, err := g.files.Mkdir(ctx, meta.RootIno, rs.bucket, 0o755); err != nil {
		if isErrno(err, syscall.EEXIST) {
			return &apiError{Code: codeBucketAlreadyOwned, Message: "a file of that name exists at the top of the file system", Resource: rs.bucket}
		}
		return err
	}
	rs.w.Header().Set("Location", "/"+rs.bucket)
	rs.w.WriteHeader(http.StatusOK)
	return nil
}

// deleteBucket is DeleteBucket: the directory must be empty.
func (g *Gateway) deleteBucket(ctx context.Context, rs *reqState) error {
	if _, err := g.bucketIno(ctx, rs.bucket); err != nil {
		return err
	}
	if err := g.files.Rmdir(ctx, meta.RootIno, rs.bucket); err != nil {
		switch {
		case isErrno(err, syscall.ENOTEMPTY):
			return &apiError{Code: codeBucketNotEmpty, Message: "the bucket you tried to delete is not empty", Resource: rs.bucket}
		case isErrno(err, syscall.ENOENT):
			return &apiError{Code: codeNoSuchBucket, Message: "the specified bucket does not exist", Resource: rs.bucket}
		}
		return err
	}
	rs.w.WriteHeader(http.StatusNoContent)
	return nil
}

// headBucket is HeadBucket.
func (g *Gateway) headBucket(ctx context.Context, rs *reqState) error {
	if _, err := g.bucketIno(ctx, rs.bucket); err != nil {
		return err
	}
	rs.w.Header().Set("x-amz-bucket-region", "us-east-1")
	rs.w.WriteHeader(http.StatusOK)
	return nil
}

type locationConstraint struct {
	XMLName xml.Name `xml:"http://s3.amazonaws.com/doc/2006-03-01/ LocationConstraint"`
	Value   string   `xml:",chardata"`
}

// getBucketLocation answers the default region (empty: us-east-1).
func (g *Gateway) getBucketLocation(ctx context.Context, rs *reqState) error {
	if _, err := g.bucketIno(ctx, rs.bucket); err != nil {
		return err
	}
	return g.writeXML(rs, http.StatusOK, locationConstraint{})
}

// listItem is one key or common prefix of a listing.
type listItem struct {
	key    string
	prefix bool
	attr   meta.Attr
	name   string
}

// lister walks a bucket's tree in S3 key order.
type lister struct {
	g      *Gateway
	prefix string
	delim  string
	after  string // keys <= after are skipped
	limit  int    // stop after limit+1 items
	items  []listItem
	lastCP string
}

func (l *lister) full() bool { return len(l.items) > l.limit }

func (l *lister) addPrefix(cp string) {
	if cp == l.lastCP || cp <= l.after {
		return
	}
	l.lastCP = cp
	l.items = append(l.items, listItem{key: cp, prefix: true})
}

// walk lists directory dir whose keys start with dirKey.
func (l *lister) walk(ctx context.Context, dir meta.Ino, dirKey string) error {
	ents, err := l.g.readAllDir(ctx, dir)
	if err != nil {
		if isErrno(err, syscall.ENOENT) {
			return nil // removed meanwhile
		}
		return err
	}
	if len(ents) == 0 && dirKey != "" {
		if strings.HasPrefix(dirKey, l.prefix) && dirKey > l.after {
			// An empty directory is a directory marker object.
			a, err := l.g.files.GetAttr(ctx, dir)
			if err == nil {
				l.items = append(l.items, listItem{key: dirKey, attr: a})
			}
		}
		return nil
	}
	type ent struct {
		meta.Dirent
		sortKey string
	}
	sorted := make([]ent, 0, len(ents))
	for _, e := range ents {
		k := e.Name
		if e.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			k += "/"
		} else if e.Mode&syscall.S_IFMT != syscall.S_IFREG {
			continue // symlinks, devices...: not objects
		}
		sorted = append(sorted, ent{e, k})
	}
	slices.SortFunc(sorted, func(a, b ent) int { return strings.Compare(a.sortKey, b.sortKey) })
	for _, e := range sorted {
		if l.full() {
			return nil
		}
		key := dirKey + e.sortKey
		isDir := strings.HasSuffix(e.sortKey, "/")
		if isDir {
			if !strings.HasPrefix(key, l.prefix) && !strings.HasPrefix(l.prefix, key) {
				continue
			}
			if key <= l.after && !strings.HasPrefix(l.after, key) {
				continue // the whole subtree sorts before the marker
			}
			if l.delim != "" && strings.HasPrefix(key, l.prefix) {
				if i := strings.Index(key[len(l.prefix):], l.delim); i >= 0 {
					l.addPrefix(key[:len(l.prefix)+i+len(l.delim)])
					continue
				}
			}
			if err := l.walk(ctx, e.Ino, key); err != nil {
				return err
			}
			continue
		}
		if !strings.HasPrefix(key, l.prefix) {
			continue
		}
		if l.delim != "" {
			if i := strings.Index(key[len(l.prefix):], l.delim); i >= 0 {
				l.addPrefix(key[:len(l.prefix)+i+len(l.delim)])
				continue
			}
		}
		if key <= l.after {
			continue
		}
		a, err := l.g.files.GetAttr(ctx, e.Ino)
		if err != nil {
			continue // removed meanwhile
		}
		l.items = append(l.items, listItem{key: key, attr: a, name: e.Name})
	}
	return nil
}

type listEntry struct {
	Key          string `xml:"Key"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
	StorageClass string `xml:"StorageClass"`
	Owner        *owner `xml:"Owner,omitempty"`
}

type commonPrefix struct {
	Prefix string `xml:"Prefix"`
}

type listBucketResult struct {
	XMLName               xml.Name       `xml:"http://s3.amazonaws.com/doc/2006-03-01/ ListBucketResult"`
	Name                  string         `xml:"Name"`
	Prefix                string         `xml:"Prefix"`
	Marker                *string        `xml:"Marker,omitempty"`
	NextMarker            string         `xml:"NextMarker,omitempty"`
	StartAfter            string         `xml:"StartAfter,omitempty"`
	ContinuationToken     string         `xml:"ContinuationToken,omitempty"`
	NextContinuationToken string         `xml:"NextContinuationToken,omitempty"`
	KeyCount              *int           `xml:"KeyCount,omitempty"`
	MaxKeys               int            `xml:"MaxKeys"`
	Delimiter             string         `xml:"Delimiter,omitempty"`
	EncodingType          string         `xml:"EncodingType,omitempty"`
	IsTruncated           bool           `xml:"IsTruncated"`
	Contents              []listEntry    `xml:"Contents"`
	CommonPrefixes        []commonPrefix `xml:"CommonPrefixes"`
}

// listObjects is ListObjectsV2 (v2) and ListObjects (v1).
func (g *Gateway) listObjects(ctx context.Context, rs *reqState, v2 bool) error {
	b, err := g.bucketIno(ctx, rs.bucket)
	if err != nil {
		return err
	}
	q := rs.r.URL.Query()
	maxKeys := 1000
	if s := q.Get("max-keys"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return s3err(codeInvalidArgument, "max-keys must be a non-negative integer")
		}
		maxKeys = min(n, 1000)
	}
	enc := q.Get("encoding-type")
	if enc != "" && enc != "url" {
		return s3err(codeInvalidArgument, "invalid encoding-type %q", enc)
	}
	res := listBucketResult{Name: rs.bucket, Prefix: q.Get("prefix"), MaxKeys: maxKeys,
		Delimiter: q.Get("delimiter"), EncodingType: enc}
	after := ""
	if v2 {
		res.StartAfter = q.Get("start-after")
		after = res.StartAfter
		if tok := q.Get("continuation-token"); tok != "" {
			raw, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil {
				return s3err(codeInvalidArgument, "the continuation token provided is incorrect")
			}
			res.ContinuationToken = tok
			after = max(after, string(raw))
		}
	} else {
		m := q.Get("marker")
		res.Marker = &m
		after = m
	}
	l := &lister{g: g, prefix: res.Prefix, delim: res.Delimiter, after: after, limit: maxKeys}
	if maxKeys > 0 {
		if err := l.walk(ctx, b, ""); err != nil {
			return err
		}
	}
	items := l.items
	if len(items) > maxKeys {
		items = items[:maxKeys]
		res.IsTruncated = true
	}
	encode := func(s string) string {
		if enc == "url" {
			return url.QueryEscape(s)
		}
		return s
	}
	for _, it := range items {
		if it.prefix {
			res.CommonPrefixes = append(res.CommonPrefixes, commonPrefix{Prefix: encode(it.key)})
			continue
		}
		o := g.describe(ctx, it.attr, it.name)
		e := listEntry{Key: encode(it.key), LastModified: s3Time(it.attr.Mtime), ETag: `"` + o.om.ETag + `"`,
			Size: int64(o.attr.Size), StorageClass: "STANDARD"}
		if !v2 || q.Get("fetch-owner") == "true" {
			e.Owner = &owner{ID: rs.auth.accessKey, DisplayName: rs.auth.accessKey}
		}
		res.Contents = append(res.Contents, e)
	}
	if res.IsTruncated && len(items) > 0 {
		last := items[len(items)-1].key
		if v2 {
			res.NextContinuationToken = base64.RawURLEncoding.EncodeToString([]byte(last))
		} else {
			res.NextMarker = encode(last)
		}
	}
	if v2 {
		n := len(items)
		res.KeyCount = &n
	}
	if enc == "url" {
		res.Prefix, res.Delimiter, res.StartAfter = encode(res.Prefix), encode(res.Delimiter), encode(res.StartAfter)
	}
	return g.writeXML(rs, http.StatusOK, res)
}

type deleteRequest struct {
	XMLName xml.Name `xml:"Delete"`
	Quiet   bool     `xml:"Quiet"`
	Objects []struct {
		Key       string `xml:"Key"`
		VersionID string `xml:"VersionId"`
	} `xml:"Object"`
}

type deletedEntry struct {
	Key string `xml:"Key"`
}

type deleteErrorEntry struct {
	Key     string `xml:"Key"`
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

type deleteResult struct {
	XMLName xml.Name           `xml:"http://s3.amazonaws.com/doc/2006-03-01/ DeleteResult"`
	Deleted []deletedEntry     `xml:"Deleted"`
	Errors  []deleteErrorEntry `xml:"Error"`
}

// readXML decodes a bounded XML request body into v.
func (g *Gateway) readXML(rs *reqState, v any) error {
	src, _, err := g.body(rs)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(src, maxXMLBody+1))
	if err != nil {
		return asAPIError(err)
	}
	if len(data) > maxXMLBody {
		return s3err(codeMalformedXML, "the XML body is too large")
	}
	if err := xml.Unmarshal(data, v); err != nil {
		return s3err(codeMalformedXML, "the XML you provided was not well-formed or did not validate against our published schema")
	}
	return nil
}

// deleteObjects is DeleteObjects (multi-object delete).
func (g *Gateway) deleteObjects(ctx context.Context, rs *reqState) error {
	b, err := g.bucketIno(ctx, rs.bucket)
	if err != nil {
		return err
	}
	var req deleteRequest
	if err := g.readXML(rs, &req); err != nil {
		return err
	}
	if len(req.Objects) == 0 || len(req.Objects) > 1000 {
		return s3err(codeMalformedXML, "a delete request names 1 to 1000 objects")
	}
	res := deleteResult{}
	for _, o := range req.Objects {
		if err := g.deleteKey(ctx, b, o.Key); err != nil {
			ae := asAPIError(err)
			if ae.Code == codeInternalError {
				g.log.Error("s3gw: delete object", "bucket", rs.bucket, "key", o.Key, "err", err)
			}
			res.Errors = append(res.Errors, deleteErrorEntry{Key: o.Key, Code: ae.Code, Message: ae.Message})
			continue
		}
		if !req.Quiet {
			res.Deleted = append(res.Deleted, deletedEntry{Key: o.Key})
		}
	}
	return g.writeXML(rs, http.StatusOK, res)
}
