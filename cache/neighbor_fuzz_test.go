package cache

import (
	"bytes"
	"hash/crc32"
	"testing"
)

// The fuzz targets feed arbitrary bytes to every decoder of neighbor
// network input: none may panic, and whatever a decoder accepts must
// satisfy the bounds it promises. Seeds are checked in under
// testdata/fuzz.

const fuzzPage = 64 << 10

func fuzzReadResp(status uint8, page []byte) []byte {
	b := make([]byte, respHeaderSize+len(page))
	copy(b[respHeaderSize:], page)
	r := readResp{status: status, length: uint32(len(page)), crc: crc32.Checksum(page, crc32.MakeTable(crc32.Castagnoli))}
	if status == statusOK {
		r.hasLoc = true
		r.loc = SlotLocation{Segment: 1, Offset: 4160, Generation: 7}
	}
	encodeReadRespHeader(b, r)
	return b
}

// FuzzNeighborReadPage covers the opReadPage request and response.
func FuzzNeighborReadPage(f *testing.F) {
	req := make([]byte, readReqSize)
	encodeReadReq(req, readReq{key: PageKey{Block: 42, Index: 3}, length: 4096, flags: readSequential})
	f.Add(req)
	f.Add(fuzzReadResp(statusOK, bytes.Repeat([]byte{0xab}, 100)))
	f.Add(fuzzReadResp(statusMiss, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeReadReq(b, fuzzPage); err == nil {
			if r.length > fuzzPage || r.flags&^readFlagsMask != 0 {
				t.Fatalf("accepted %+v", r)
			}
		}
		if r, err := decodeReadResp(b, fuzzPage); err == nil && r.status == statusOK {
			if len(r.data) != int(r.length) || r.length == 0 || r.length > fuzzPage {
				t.Fatalf("accepted a page of %d bytes claiming %d", len(r.data), r.length)
			}
		}
	})
}

// FuzzNeighborPutPage covers the opPutPage request.
func FuzzNeighborPutPage(f *testing.F) {
	table := crc32.MakeTable(crc32.Castagnoli)
	page := bytes.Repeat([]byte{1, 2, 3}, 50)
	b := make([]byte, putReqSize+len(page))
	copy(b[putReqSize:], page)
	encodePutReq(b, PageKey{Block: 9, Index: 1}, crc32.Checksum(page, table), len(page))
	f.Add(b)
	f.Add(b[:putReqSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, data, err := decodePutReq(b, fuzzPage, table)
		if err == nil && (len(data) == 0 || len(data) > fuzzPage || crc32.Checksum(data, table) != crc32.Checksum(b[putReqSize:], table)) {
			t.Fatalf("accepted a %d-byte page", len(data))
		}
	})
}

// FuzzNeighborLocate covers the opLocate request and response.
func FuzzNeighborLocate(f *testing.F) {
	f.Add(encodeLocateReq([]PageKey{{Block: 1, Index: 2}, {Block: 3, Index: 4}}))
	f.Add(encodeLocateResp([]uint8{locMemory, locDisk | locMemory, 0}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		if keys, err := decodeLocateReq(b); err == nil && len(keys) > maxLocate {
			t.Fatalf("accepted %d keys", len(keys))
		}
		for _, want := range []int{0, 1, 3} {
			if st, err := decodeLocateResp(b, want); err == nil && len(st) != want {
				t.Fatalf("accepted %d states for %d pages", len(st), want)
			}
		}
	})
}

// FuzzNeighborWarm covers the opWarmBlock request and response, and the
// slot check of one-sided reads.
func FuzzNeighborWarm(f *testing.F) {
	f.Add(encodeWarmReq(5, 512<<10))
	f.Add(encodeWarmResp(8, true))
	f.Add(make([]byte, slotHeaderSize+16))
	table := crc32.MakeTable(crc32.Castagnoli)
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, n, err := decodeWarmReq(b, 512<<10); err == nil && (n <= 0 || n > 512<<10) {
			t.Fatalf("accepted block length %d", n)
		}
		if n, _, err := decodeWarmResp(b, 8); err == nil && n > 8 {
			t.Fatalf("accepted %d pages", n)
		}
		_ = checkSlot(b, PageKey{}, SlotLocation{Length: uint32(max(0, len(b)-slotHeaderSize))}, table)
	})
}

// FuzzNeighborLookup covers the opLookup request and response: a location
// response never carries page bytes, a hit always has a location and a
// length in 1..page size, a miss has no fields set.
func FuzzNeighborLookup(f *testing.F) {
	req := make([]byte, readReqSize)
	encodeReadReq(req, readReq{key: PageKey{Block: 7, Index: 1}, length: 4096})
	f.Add(req)
	ok := make([]byte, respHeaderSize)
	encodeReadRespHeader(ok, readResp{status: statusOK, hasLoc: true, length: 4096, crc: 0xdeadbeef,
		loc: SlotLocation{Segment: 2, Offset: 8256, Generation: 9}})
	f.Add(ok)
	miss := make([]byte, respHeaderSize)
	encodeReadRespHeader(miss, readResp{status: statusMiss})
	f.Add(miss)
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeLookupReq(b, fuzzPage); err == nil && (r.length == 0 || r.length > fuzzPage || r.flags&^readFlagsMask != 0) {
			t.Fatalf("accepted lookup request %+v", r)
		}
		r, err := decodeLookupResp(b, fuzzPage)
		if err != nil {
			return
		}
		switch {
		case len(b) != respHeaderSize || r.data != nil:
			t.Fatalf("accepted a lookup response of %d bytes with data %d", len(b), len(r.data))
		case r.status == statusOK && (!r.hasLoc || r.length == 0 || r.length > fuzzPage || r.loc.Length != r.length):
			t.Fatalf("accepted a located hit %+v", r)
		case r.status == statusMiss && (r.hasLoc || r.length != 0):
			t.Fatalf("accepted a miss %+v", r)
		case r.status != statusOK && r.status != statusMiss:
			t.Fatalf("accepted status %d", r.status)
		}
	})
}

// TestLookupWire round-trips the opLookup messages and rejects a lookup
// response with page bytes, a hit without a location and a zero length.
func TestLookupWire(t *testing.T) {
	req := make([]byte, readReqSize)
	encodeReadReq(req, readReq{key: PageKey{Block: 7, Index: 1}, length: 4096, flags: readSequential})
	if r, err := decodeLookupReq(req, fuzzPage); err != nil || r.key != (PageKey{Block: 7, Index: 1}) || r.length != 4096 || r.flags != readSequential {
		t.Fatalf("lookup request: %+v %v", r, err)
	}
	encodeReadReq(req, readReq{key: PageKey{Block: 7, Index: 1}})
	if _, err := decodeLookupReq(req, fuzzPage); err == nil {
		t.Fatal("accepted a lookup of length 0")
	}
	loc := SlotLocation{Segment: 2, Offset: 8256, Generation: 9, Length: 4096}
	b := make([]byte, respHeaderSize)
	encodeReadRespHeader(b, readResp{status: statusOK, hasLoc: true, length: 4096, crc: 5, loc: loc})
	if r, err := decodeLookupResp(b, fuzzPage); err != nil || r.loc != loc || r.crc != 5 {
		t.Fatalf("lookup response: %+v %v", r, err)
	}
	if _, err := decodeLookupResp(append(b, 0), fuzzPage); err == nil {
		t.Fatal("accepted a lookup response with page bytes")
	}
	encodeReadRespHeader(b, readResp{status: statusOK, length: 4096, crc: 5, loc: loc})
	if _, err := decodeLookupResp(b, fuzzPage); err == nil {
		t.Fatal("accepted a hit without a location")
	}
	encodeReadRespHeader(b, readResp{status: statusOK, hasLoc: true, crc: 5, loc: loc})
	if _, err := decodeLookupResp(b, fuzzPage); err == nil {
		t.Fatal("accepted a hit of length 0")
	}
	encodeReadRespHeader(b, readResp{status: statusMiss})
	if r, err := decodeLookupResp(b, fuzzPage); err != nil || r.status != statusMiss {
		t.Fatalf("miss: %+v %v", r, err)
	}
}
