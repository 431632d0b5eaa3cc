package s3gw

import (
	"net/netip"
	"strings"
)

const (
	// maxKeyLen is S3's longest key, in bytes.
	maxKeyLen = 1024
	// maxSegment is the longest file name of the file system.
	maxSegment = 255
)

// validBucketName reports whether name follows the S3 bucket naming rules
// (3 to 63 lower-case letters, digits, dots and hyphens, starting and
// ending with a letter or digit, no "..", not an IP address, not
// starting with xn-- or ending with -s3alias). The gateway's own hidden
// directory starts with a dot and so is never a valid name.
func validBucketName(name string) bool {
	if len(name) < 3 || len(name) > 63 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	if !isAlnum(name[0]) || !isAlnum(name[len(name)-1]) {
		return false
	}
	if strings.Contains(name, "..") || strings.Contains(name, ".-") || strings.Contains(name, "-.") {
		return false
	}
	if strings.HasPrefix(name, "xn--") || strings.HasPrefix(name, "sthree-") ||
		strings.HasSuffix(name, "-s3alias") || strings.HasSuffix(name, "--ol-s3") {
		return false
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return false
	}
	return true
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// splitKey checks an object key and splits it into path segments. A key
// ending in '/' names a directory (marker); dir reports that. Keys the file
// system cannot represent are refused with InvalidArgument: empty
// segments ("a//b", a leading '/'), "." and ".." segments and NUL bytes;
// a segment over 255 bytes or a key over 1024 is KeyTooLongError.
func splitKey(key string) (segs []string, dir bool, err *apiError) {
	if key == "" {
		return nil, false, s3err(codeInvalidArgument, "the object key is empty")
	}
	if len(key) > maxKeyLen {
		return nil, false, s3err(codeKeyTooLong, "your key is too long (at most %d bytes)", maxKeyLen)
	}
	if strings.IndexByte(key, 0) >= 0 {
		return nil, false, s3err(codeInvalidArgument, "the object key contains a NUL byte, which a file name cannot hold")
	}
	if strings.HasSuffix(key, "/") {
		dir = true
		key = key[:len(key)-1]
	}
	segs = strings.Split(key, "/")
	for _, s := range segs {
		switch {
		case s == "":
			return nil, false, s3err(codeInvalidArgument, "the object key has an empty path segment (a leading '/' or '//'), which the file system cannot represent")
		case s == "." || s == "..":
			return nil, false, s3err(codeInvalidArgument, "the object key has a %q path segment, which the file system cannot represent", s)
		case len(s) > maxSegment:
			return nil, false, s3err(codeKeyTooLong, "a path segment of the key is longer than %d bytes", maxSegment)
		}
	}
	return segs, dir, nil
}
