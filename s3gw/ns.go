package s3gw

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"path"
	"syscall"
	"time"

	"github.com/datenlord/datenlord-go/meta"
)

// objectMeta is the record kept in an object's xattrObject.
type objectMeta struct {
	// ETag is the unquoted ETag.
	ETag string `json:"etag"`
	// Version is the inode's content version the record describes.
	Version     uint64            `json:"v"`
	ContentType string            `json:"ct,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
	// Headers are stored standard headers (Cache-Control...).
	Headers map[string]string `json:"h,omitempty"`
}

// storedHeaders returns the standard headers kept with an object.
func storedHeaders() []string {
	return []string{"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires"}
}

// object is a resolved object.
type object struct {
	attr meta.Attr
	om   objectMeta
	// dir is a directory marker object.
	dir bool
}

func (o *object) lastModified() time.Time { return time.Unix(0, o.attr.Mtime).UTC() }

// isErrno reports whether err carries errno.
func isErrno(err error, errno syscall.Errno) bool { return errors.Is(err, errno) }

// bucketIno resolves a bucket to its directory.
func (g *Gateway) bucketIno(ctx context.Context, bucket string) (meta.Ino, error) {
	if !validBucketName(bucket) {
		if bucket == hiddenDir {
			return 0, s3err(codeInvalidBucketName, "the bucket name %q is reserved", bucket)
		}
		return 0, &apiError{Code: codeNoSuchBucket, Message: "the specified bucket does not exist", Resource: bucket}
	}
	a, err := g.files.Lookup(ctx, meta.RootIno, bucket)
	if err != nil || !a.IsDir() {
		if err == nil || isErrno(err, syscall.ENOENT) {
			return 0, &apiError{Code: codeNoSuchBucket, Message: "the specified bucket does not exist", Resource: bucket}
		}
		return 0, err
	}
	return a.Ino, nil
}

// walk looks up segs under dir; ENOENT and ENOTDIR are NoSuchKey.
func (g *Gateway) walk(ctx context.Context, dir meta.Ino, segs []string) (meta.Attr, error) {
	var a meta.Attr
	for i, s := range segs {
		var err error
		a, err = g.files.Lookup(ctx, dir, s)
		if err != nil {
			if isErrno(err, syscall.ENOENT) || isErrno(err, syscall.ENOTDIR) || isErrno(err, syscall.ENAMETOOLONG) {
				return meta.Attr{}, s3err(codeNoSuchKey, "the specified key does not exist")
			}
			return meta.Attr{}, err
		}
		if i < len(segs)-1 && !a.IsDir() {
			return meta.Attr{}, s3err(codeNoSuchKey, "the specified key does not exist")
		}
		dir = a.Ino
	}
	return a, nil
}

// mkdirAll creates the directories segs under dir and returns the last.
func (g *Gateway) mkdirAll(ctx context.Context, dir meta.Ino, segs []string) (meta.Ino, error) {
	for _, s := range segs {
		a, err := g.files.Lookup(ctx, dir, s)
		if err == nil && !a.IsDir() {
			return 0, s3err(codeObjectConflict, "a prefix of the key is an existing object (%q), which cannot also be a directory", s)
		}
		if err != nil {
			if !isErrno(err, syscall.ENOENT) {
				return 0, err
			}
			a, err = g.files.Mkdir(ctx, dir, s, 0o755)
			if err != nil {
				if isErrno(err, syscall.EEXIST) {
					return 0, s3err(codeObjectConflict, "a prefix of the key is an existing object (%q), which cannot also be a directory", s)
				}
				return 0, err
			}
		}
		dir = a.Ino
	}
	return dir, nil
}

// resolve finds the object of key in bucket directory b.
func (g *Gateway) resolve(ctx context.Context, b meta.Ino, key string) (*object, error) {
	segs, dirKey, aerr := splitKey(key)
	if aerr != nil {
		return nil, aerr
	}
	a, err := g.walk(ctx, b, segs)
	if err != nil {
		return nil, err
	}
	if a.IsDir() != dirKey || !a.IsDir() && !a.IsRegular() {
		return nil, s3err(codeNoSuchKey, "the specified key does not exist")
	}
	return g.describe(ctx, a, path.Base(key)), nil
}

// emptyMD5 is the MD5 of no bytes, the ETag of a directory marker.
const emptyMD5 = "d41d8cd98f00b204e9800998ecf8427e"

// describe returns the object of attributes a (name for the guessed
// content type of a file written through FUSE).
func (g *Gateway) describe(ctx context.Context, a meta.Attr, name string) *object {
	o := &object{attr: a, dir: a.IsDir()}
	if o.dir {
		o.attr.Size = 0
		o.om = objectMeta{ETag: emptyMD5, ContentType: "application/x-directory"}
		return o
	}
	if v, err := g.files.GetXattr(ctx, a.Ino, xattrObject); err == nil {
		if json.Unmarshal(v, &o.om) == nil && o.om.Version == a.Version && o.om.ETag != "" {
			return o
		}
	}
	o.om = objectMeta{ETag: fallbackETag(a), ContentType: mime.TypeByExtension(path.Ext(name))}
	return o
}

// fallbackETag is the ETag of a file without a valid record: a digest of
// inode, content version, size and mtime, stable until the file changes.
func fallbackETag(a meta.Attr) string {
	var b [32]byte
	binary.BigEndian.PutUint64(b[0:], uint64(a.Ino))
	binary.BigEndian.PutUint64(b[8:], a.Version)
	binary.BigEndian.PutUint64(b[16:], a.Size)
	binary.BigEndian.PutUint64(b[24:], uint64(a.Mtime))
	s := sha256.Sum256(b[:])
	return hex.EncodeToString(s[:16])
}

// removeTree removes everything under directory dir (not dir itself) and
// returns how many entries it removed.
func (g *Gateway) removeTree(ctx context.Context, dir meta.Ino) (int, error) {
	n := 0
	for {
		ents, err := g.files.ReadDir(ctx, dir, "", 256)
		if err != nil {
			return n, err
		}
		if len(ents) == 0 {
			return n, nil
		}
		for _, e := range ents {
			if e.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				m, err := g.removeTree(ctx, e.Ino)
				n += m
				if err != nil {
					return n, err
				}
				err = g.files.Rmdir(ctx, dir, e.Name)
				if err != nil && !isErrno(err, syscall.ENOENT) {
					return n, err
				}
			} else if err := g.files.Unlink(ctx, dir, e.Name); err != nil && !isErrno(err, syscall.ENOENT) {
				return n, err
			}
			n++
		}
	}
}

// readAllDir reads every entry of dir, in name order.
func (g *Gateway) readAllDir(ctx context.Context, dir meta.Ino) ([]meta.Dirent, error) {
	var all []meta.Dirent
	after := ""
	for {
		ents, err := g.files.ReadDir(ctx, dir, after, 1024)
		if err != nil {
			return nil, err
		}
		all = append(all, ents...)
		if len(ents) < 1024 {
			return all, nil
		}
		after = ents[len(ents)-1].Name
	}
}

// encodeMeta encodes an object record for its xattr.
func encodeMeta(om objectMeta) ([]byte, error) {
	b, err := json.Marshal(om)
	if err != nil {
		return nil, fmt.Errorf("encode object metadata: %w", err)
	}
	if len(b) > meta.MaxXattrSize {
		return nil, s3err("MetadataTooLarge", "the object's metadata headers exceed %d bytes", meta.MaxXattrSize)
	}
	return b, nil
}

// target resolves a request's bucket to its directory and splits its key
// into path segments (dirKey: the key ends in '/').
func (g *Gateway) target(ctx context.Context, rs *reqState) (bucket meta.Ino, segs []string, dirKey bool, err error) {
	b, err := g.bucketIno(ctx, rs.bucket)
	if err != nil {
		return 0, nil, false, err
	}
	segs, dirKey, aerr := splitKey(rs.key)
	if aerr != nil {
		return 0, nil, false, aerr
	}
	return b, segs, dirKey, nil
}
