package s3gw

import (
	"bufio"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"strconv"
	"strings"
)

// aws-chunked bodies.
//
// STREAMING-AWS4-HMAC-SHA256-PAYLOAD sends the body as chunks
//
//	HEX-SIZE;chunk-signature=SIG\r\n DATA \r\n ... 0;chunk-signature=SIG\r\n\r\n
//
// where each chunk's signature chains on the previous one (the first on
// the request's signature). The -TRAILER variant ends with trailing
// headers and an x-amz-trailer-signature; STREAMING-UNSIGNED-PAYLOAD-TRAILER
// has bare sizes and trailers carrying a checksum (x-amz-checksum-crc32,
// -crc32c, -crc64nvme, -sha1 or -sha256), which is checked.
//
// The decoder streams: a chunk's data is handed on as it arrives and its
// signature is checked at the chunk's end, so a bad chunk fails the read
// before the body's EOF, and the caller (which commits nothing before EOF)
// drops what it wrote.

const (
	// maxChunkLine bounds a chunk header or trailer line.
	maxChunkLine = 4096
	// maxTrailers bounds the trailing header lines.
	maxTrailers = 16
)

// crc64NVME is the CRC-64/NVME polynomial (reflected), which S3 uses for
// x-amz-checksum-crc64nvme.
const crc64NVME = 0x9a6c9329ac4bc9b5

// chunkedReader decodes an aws-chunked body.
type chunkedReader struct {
	r        *bufio.Reader
	signed   bool      // chunk signatures to check
	trailer  bool      // trailing headers follow the last chunk
	auth     *authInfo // signing context (signed only)
	prevSig  string
	remain   int64     // data bytes left in the current chunk
	inChunk  bool      // a chunk's data is being read
	chunkSig string    // the current chunk's declared signature
	chunkH   hash.Hash // SHA-256 of the current chunk (signed)
	sumName  string    // trailer checksum header expected, e.g. x-amz-checksum-crc32
	sum      hash.Hash // checksum of all data, for the trailer
	decoded  int64
	err      error
}

// newChunkedReader decodes body as the payload mode says. trailerName is
// the x-amz-trailer header (which checksum the trailer carries).
func newChunkedReader(body io.Reader, mode string, auth *authInfo, trailerName string) (*chunkedReader, *apiError) {
	c := &chunkedReader{r: bufio.NewReaderSize(body, 64<<10)}
	switch mode {
	case streamingSigned:
		c.signed = true
	case streamingSignedTrailer:
		c.signed, c.trailer = true, true
	case streamingUnsignedTrail:
		c.trailer = true
	default:
		return nil, s3err(codeInvalidArgument, "unknown streaming payload mode %q", mode)
	}
	if c.signed {
		if auth == nil {
			return nil, s3err(codeAccessDenied, "a signed chunked body needs a signed request")
		}
		c.auth, c.prevSig, c.chunkH = auth, auth.signature, sha256.New()
	}
	if c.trailer && trailerName != "" {
		c.sumName = strings.ToLower(strings.TrimSpace(trailerName))
		switch c.sumName {
		case "x-amz-checksum-crc32":
			c.sum = crc32.NewIEEE()
		case "x-amz-checksum-crc32c":
			c.sum = crc32.New(crc32.MakeTable(crc32.Castagnoli))
		case "x-amz-checksum-crc64nvme":
			c.sum = crc64.New(crc64.MakeTable(crc64NVME))
		case "x-amz-checksum-sha1":
			c.sum = sha1.New()
		case "x-amz-checksum-sha256":
			c.sum = sha256.New()
		default:
			return nil, s3err(codeInvalidArgument, "unsupported x-amz-trailer %q", trailerName)
		}
	}
	return c, nil
}

func (c *chunkedReader) fail(e *apiError) (int, error) {
	c.err = e
	return 0, e
}

func malformedChunk(what string) *apiError {
	return s3err(codeIncompleteBody, "malformed aws-chunked body: %s", what)
}

func (c *chunkedReader) readLine() (string, error) {
	var b []byte
	for {
		frag, err := c.r.ReadSlice('\n')
		b = append(b, frag...)
		if len(b) > maxChunkLine {
			return "", malformedChunk("line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				return "", malformedChunk("truncated")
			}
			return "", err
		}
		break
	}
	s := string(b)
	if !strings.HasSuffix(s, "\r\n") {
		return "", malformedChunk("line not ended by CRLF")
	}
	return s[:len(s)-2], nil
}

// chunkStringToSign is what a chunk's signature signs.
func (c *chunkedReader) verifyChunk(sum []byte) *apiError {
	sts := "AWS4-HMAC-SHA256-PAYLOAD\n" + c.auth.amzDate + "\n" + c.auth.scope + "\n" +
		c.prevSig + "\n" + emptySHA256 + "\n" + hex.EncodeToString(sum)
	want := hex.EncodeToString(hmacSHA256(c.auth.signingKey, []byte(sts)))
	if !hmacEqual(want, c.chunkSig) {
		return s3err(codeSignatureDoesNotMatch, "a chunk signature does not match")
	}
	c.prevSig = want
	return nil
}

func hmacEqual(a, b string) bool {
	return len(a) == len(b) && subtleEq(a, strings.ToLower(b))
}

func subtleEq(a, b string) bool {
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// header reads the next chunk header; it returns the chunk size.
func (c *chunkedReader) header() (int64, *apiError) {
	line, err := c.readLine()
	if err != nil {
		return 0, asAPIError(err)
	}
	sizeStr, ext, _ := strings.Cut(line, ";")
	size, perr := strconv.ParseInt(strings.TrimSpace(sizeStr), 16, 64)
	if perr != nil || size < 0 || size > 1<<40 {
		return 0, malformedChunk("bad chunk size")
	}
	if c.signed {
		sig, ok := strings.CutPrefix(ext, "chunk-signature=")
		if !ok || len(sig) != 64 {
			return 0, malformedChunk("missing chunk-signature")
		}
		c.chunkSig = sig
		c.chunkH.Reset()
	}
	return size, nil
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for c.remain == 0 {
		if c.inChunk {
			// End of a chunk's data: CRLF, then its signature.
			line, err := c.readLine()
			if err != nil {
				return c.fail(asAPIError(err))
			}
			if line != "" {
				return c.fail(malformedChunk("chunk data longer than its size"))
			}
			if c.signed {
				if e := c.verifyChunk(c.chunkH.Sum(nil)); e != nil {
					return c.fail(e)
				}
			}
			c.inChunk = false
		}
		size, e := c.header()
		if e != nil {
			return c.fail(e)
		}
		if size == 0 {
			if c.signed {
				if e := c.verifyChunk(c.chunkH.Sum(nil)); e != nil {
					return c.fail(e)
				}
			}
			if e := c.finish(); e != nil {
				return c.fail(e)
			}
			c.err = io.EOF
			return 0, io.EOF
		}
		c.remain, c.inChunk = size, true
	}
	if int64(len(p)) > c.remain {
		p = p[:c.remain]
	}
	n, err := c.r.Read(p)
	c.remain -= int64(n)
	c.decoded += int64(n)
	if c.signed {
		c.chunkH.Write(p[:n])
	}
	if c.sum != nil {
		c.sum.Write(p[:n])
	}
	if err == io.EOF {
		if c.remain > 0 {
			return n, c.setErr(malformedChunk("truncated chunk"))
		}
		err = nil
	}
	if err != nil {
		return n, c.setErr(asAPIError(err))
	}
	return n, nil
}

func (c *chunkedReader) setErr(e *apiError) error {
	c.err = e
	return e
}

// finish reads what follows the last chunk: CRLF, or the trailers.
func (c *chunkedReader) finish() *apiError {
	if !c.trailer {
		line, err := c.readLine()
		if err != nil {
			return asAPIError(err)
		}
		if line != "" {
			return malformedChunk("data after the last chunk")
		}
		return nil
	}
	var canon strings.Builder
	var trailerSig, gotSum string
	for i := 0; ; i++ {
		if i > maxTrailers {
			return malformedChunk("too many trailers")
		}
		line, err := c.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			ae := asAPIError(err)
			if ae.Code == codeIncompleteBody && i > 0 {
				break // some clients end the trailers without the last CRLF
			}
			return ae
		}
		if line == "" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return malformedChunk("bad trailer line")
		}
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		if k == "x-amz-trailer-signature" {
			trailerSig = v
			continue
		}
		canon.WriteString(k + ":" + v + "\n")
		if k == c.sumName {
			gotSum = v
		}
	}
	if c.signed {
		sts := "AWS4-HMAC-SHA256-TRAILER\n" + c.auth.amzDate + "\n" + c.auth.scope + "\n" +
			c.prevSig + "\n" + hexSHA256([]byte(canon.String()))
		want := hex.EncodeToString(hmacSHA256(c.auth.signingKey, []byte(sts)))
		if !hmacEqual(want, trailerSig) {
			return s3err(codeSignatureDoesNotMatch, "the trailer signature does not match")
		}
	}
	if c.sum != nil {
		want := base64.StdEncoding.EncodeToString(c.sum.Sum(nil))
		if gotSum == "" {
			return s3err(codeInvalidRequest, "the trailer %s is missing", c.sumName)
		}
		if gotSum != want {
			return s3err(codeBadDigest, "the %s you specified did not match the calculated checksum", c.sumName)
		}
	}
	return nil
}
