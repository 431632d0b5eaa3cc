package s3gw

import (
	"context"
	"io"
	"sync"

	"github.com/datenlord/datenlord-go/fs"
)

// sendBufs recycles the ioBuf buffers of sendRange: a fresh megabyte per
// GET would be zeroed (and faulted in) every time.
var sendBufs = sync.Pool{New: func() any { b := make([]byte, ioBuf); return &b }}

// sendRange writes bytes [off, end) of rd to w in chunks of up to ioBuf.
// The caller marks rd sequential from off (fs.Reader.ReadAhead), so the
// blocks ahead load with whole-block reads while chunks are written. (A
// reader goroutine filling chunks ahead of the writer was measured slower
// on two shared cores: the handoffs cost more than the overlap gains when
// the pages come from memory.) An error of the client's connection ends the
// copy quietly (the client went away); a read error is returned (the
// response has started: the client sees a short body), as is a file that
// shrank under the reader (a FUSE truncate), silently.
func sendRange(ctx context.Context, w io.Writer, rd *fs.Reader, off, end uint64) error {
	if end <= off {
		return nil
	}
	pb := sendBufs.Get().(*[]byte)
	defer sendBufs.Put(pb)
	buf := (*pb)[:min(end-off, ioBuf)]
	for off < end {
		n, err := rd.ReadAt(ctx, buf[:min(uint64(len(buf)), end-off)], off)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil // the client went away
			}
			off += uint64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}
