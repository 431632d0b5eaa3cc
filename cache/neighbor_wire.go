package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Wire ops of the neighbor tier, in the cache's range 0x0200-0x02ff of
// the node RPC. All integers are little endian; every decoder checks
// sizes, reserved bytes and bounds before using a field, and a page
// carries the CRC-32C of its bytes from the owner's slot header to the
// reader, which checks it: corruption anywhere on the way is a miss.
//
//	opPing      req: empty                               resp: empty
//	opReadPage  req: block u64 | index u32 | length u32 | flags u8 | 0 0 0        (20 bytes)
//	            resp: status u8 | has loc u8 | 0 0 | length u32 | crc u32 | segment u32 |
//	                  generation u64 | offset u64 | page bytes (status ok)          (32 + length)
//	opPutPage   req: block u64 | index u32 | length u32 | crc u32 | 0 0 0 0 | page bytes (24 + length)
//	            resp: empty
//	opLocate    req: count u32 | count x (block u64 | index u32)
//	            resp: count u32 | count x state u8 (bit 0 memory, bit 1 disk)
//	opWarmBlock req: block u64 | block length u32 | 0 0 0 0                          (16 bytes)
//	            resp: pages u32 | fetched u8 | 0 0 0                                  (8 bytes)
//	opLookup    req: as opReadPage, length > 0                                       (20 bytes)
//	            resp: the opReadPage response header, no page bytes                  (32 bytes)
//	                  status ok: has loc 1, length and crc of the slot's page
//	                  status miss: all other fields 0
//
// opReadPage length 0 asks for the page only if the owner holds it. Flags:
// readSequential fills the whole block (at its coordinator) on a miss;
// readCoordinate says the receiver is the block's coordinator and must
// fill itself rather than forward.
//
// opLookup is opReadPage without the page: the owner answers where the
// page's slot is in its memory arena (filling on a miss exactly as for
// opReadPage), and the reader then reads the slot one-sidedly (RDMA), so
// page bytes never travel over the request path. A page the owner cannot
// place in its arena is a miss; the reader then uses opReadPage.
const (
	opPing      uint16 = 0x0200
	opReadPage  uint16 = 0x0201
	opPutPage   uint16 = 0x0202
	opLocate    uint16 = 0x0203
	opWarmBlock uint16 = 0x0204
	opLookup    uint16 = 0x0205

	readReqSize    = 20
	respHeaderSize = 32
	putReqSize     = 24
	warmReqSize    = 16
	warmRespSize   = 8
	locateEntry    = 12
	// maxLocate bounds the pages of one locate request.
	maxLocate = 1 << 16

	readSequential uint8 = 1 << 0
	readCoordinate uint8 = 1 << 1
	readFlagsMask        = readSequential | readCoordinate

	statusOK   uint8 = 0
	statusMiss uint8 = 1

	locMemory uint8 = 1 << 0
	locDisk   uint8 = 1 << 1
)

// errWire marks a malformed neighbor message.
var errWire = errors.New("malformed neighbor message")

func wireErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errWire, fmt.Sprintf(format, args...))
}

// readReq is a decoded opReadPage request.
type readReq struct {
	key    PageKey
	length uint32
	flags  uint8
}

func encodeReadReq(b []byte, r readReq) {
	_ = b[readReqSize-1]
	binary.LittleEndian.PutUint64(b[0:], r.key.Block)
	binary.LittleEndian.PutUint32(b[8:], r.key.Index)
	binary.LittleEndian.PutUint32(b[12:], r.length)
	b[16], b[17], b[18], b[19] = r.flags, 0, 0, 0
}

func decodeReadReq(b []byte, pageSize int) (readReq, error) {
	if len(b) != readReqSize {
		return readReq{}, wireErr("read request of %d bytes, want %d", len(b), readReqSize)
	}
	r := readReq{
		key:    PageKey{Block: binary.LittleEndian.Uint64(b[0:]), Index: binary.LittleEndian.Uint32(b[8:])},
		length: binary.LittleEndian.Uint32(b[12:]),
		flags:  b[16],
	}
	if b[17]|b[18]|b[19] != 0 {
		return readReq{}, wireErr("read request: reserved bytes set")
	}
	if r.flags&^readFlagsMask != 0 {
		return readReq{}, wireErr("read request: unknown flags 0x%02x", r.flags)
	}
	if int64(r.length) > int64(pageSize) {
		return readReq{}, wireErr("read request: length %d exceeds the page size %d", r.length, pageSize)
	}
	return r, nil
}

// decodeLookupReq decodes an opLookup request: a read request whose
// length is known (the owner fills on a miss, which needs it).
func decodeLookupReq(b []byte, pageSize int) (readReq, error) {
	r, err := decodeReadReq(b, pageSize)
	if err != nil {
		return readReq{}, err
	}
	if r.length == 0 {
		return readReq{}, wireErr("lookup request: page length 0")
	}
	return r, nil
}

// decodeLookupResp decodes an opLookup response: a location (status ok,
// r.loc.Length set) or a miss; it never carries page bytes.
func decodeLookupResp(b []byte, pageSize int) (readResp, error) {
	if len(b) != respHeaderSize {
		return readResp{}, wireErr("lookup response of %d bytes, want %d", len(b), respHeaderSize)
	}
	if b[0] == statusOK {
		if b[1] != 1 {
			return readResp{}, wireErr("lookup response: a hit without a location")
		}
		// Decode as the header of a response with its page, then drop
		// the page: the owner sent only where it is.
		r, err := decodeReadRespHead(b, respHeaderSize+int(min(binary.LittleEndian.Uint32(b[4:]), uint32(pageSize)+1)), pageSize)
		if err != nil {
			return readResp{}, err
		}
		return r, nil
	}
	return decodeReadRespHead(b, respHeaderSize, pageSize)
}

// readResp is a decoded opReadPage response; data aliases the message.
type readResp struct {
	status uint8
	hasLoc bool
	length uint32
	crc    uint32
	loc    SlotLocation
	data   []byte
}

// encodeReadRespHeader writes the response header in front of the page
// bytes (b[respHeaderSize:], r.length of them).
func encodeReadRespHeader(b []byte, r readResp) {
	_ = b[respHeaderSize-1]
	b[0] = r.status
	b[1] = 0
	if r.hasLoc {
		b[1] = 1
	}
	b[2], b[3] = 0, 0
	binary.LittleEndian.PutUint32(b[4:], r.length)
	binary.LittleEndian.PutUint32(b[8:], r.crc)
	binary.LittleEndian.PutUint32(b[12:], r.loc.Segment)
	binary.LittleEndian.PutUint64(b[16:], r.loc.Generation)
	binary.LittleEndian.PutUint64(b[24:], r.loc.Offset)
}

func decodeReadResp(b []byte, pageSize int) (readResp, error) {
	if len(b) < respHeaderSize {
		return readResp{}, wireErr("read response of %d bytes, shorter than its header", len(b))
	}
	r, err := decodeReadRespHead(b[:respHeaderSize], len(b), pageSize)
	if err == nil && r.status == statusOK {
		r.data = b[respHeaderSize:]
	}
	return r, err
}

// decodeReadRespHead decodes the header of a read response of total bytes
// (header included) whose page bytes are elsewhere (r.data stays nil).
func decodeReadRespHead(b []byte, total int, pageSize int) (readResp, error) {
	if len(b) < respHeaderSize || total < respHeaderSize {
		return readResp{}, wireErr("read response of %d bytes, shorter than its header", total)
	}
	r := readResp{
		status: b[0],
		hasLoc: b[1] == 1,
		length: binary.LittleEndian.Uint32(b[4:]),
		crc:    binary.LittleEndian.Uint32(b[8:]),
		loc: SlotLocation{
			Segment:    binary.LittleEndian.Uint32(b[12:]),
			Generation: binary.LittleEndian.Uint64(b[16:]),
			Offset:     binary.LittleEndian.Uint64(b[24:]),
		},
	}
	if b[1] > 1 || b[2]|b[3] != 0 {
		return readResp{}, wireErr("read response: reserved bytes set")
	}
	switch r.status {
	case statusOK:
		if r.length == 0 || int64(r.length) > int64(pageSize) {
			return readResp{}, wireErr("read response: page length %d outside 1..%d", r.length, pageSize)
		}
		if uint64(total) != respHeaderSize+uint64(r.length) {
			return readResp{}, wireErr("read response of %d bytes for a %d-byte page", total, r.length)
		}
		r.loc.Length = r.length
	case statusMiss:
		if total != respHeaderSize || r.length != 0 || r.hasLoc {
			return readResp{}, wireErr("read response: miss with a page")
		}
	default:
		return readResp{}, wireErr("read response: unknown status %d", r.status)
	}
	return r, nil
}

// encodePutReq writes the opPutPage header in front of n page bytes
// (b[putReqSize:putReqSize+n]).
func encodePutReq(b []byte, key PageKey, crc uint32, n int) {
	_ = b[putReqSize-1]
	binary.LittleEndian.PutUint64(b[0:], key.Block)
	binary.LittleEndian.PutUint32(b[8:], key.Index)
	binary.LittleEndian.PutUint32(b[12:], uint32(n))
	binary.LittleEndian.PutUint32(b[16:], crc)
	binary.LittleEndian.PutUint32(b[20:], 0)
}

// decodePutReq decodes an opPutPage request and checks the page's CRC.
func decodePutReq(b []byte, pageSize int, table *crc32.Table) (PageKey, []byte, error) {
	if len(b) < putReqSize {
		return PageKey{}, nil, wireErr("put request of %d bytes, shorter than its header", len(b))
	}
	key := PageKey{Block: binary.LittleEndian.Uint64(b[0:]), Index: binary.LittleEndian.Uint32(b[8:])}
	n := binary.LittleEndian.Uint32(b[12:])
	crc := binary.LittleEndian.Uint32(b[16:])
	if binary.LittleEndian.Uint32(b[20:]) != 0 {
		return PageKey{}, nil, wireErr("put request: reserved bytes set")
	}
	if n == 0 || int64(n) > int64(pageSize) {
		return PageKey{}, nil, wireErr("put request: page length %d outside 1..%d", n, pageSize)
	}
	if uint64(len(b)) != putReqSize+uint64(n) {
		return PageKey{}, nil, wireErr("put request of %d bytes for a %d-byte page", len(b), n)
	}
	data := b[putReqSize:]
	if crc32.Checksum(data, table) != crc {
		return PageKey{}, nil, wireErr("put request: page checksum mismatch")
	}
	return key, data, nil
}

func encodeLocateReq(keys []PageKey) []byte {
	b := make([]byte, 4+locateEntry*len(keys))
	binary.LittleEndian.PutUint32(b, uint32(len(keys)))
	for i, k := range keys {
		o := 4 + locateEntry*i
		binary.LittleEndian.PutUint64(b[o:], k.Block)
		binary.LittleEndian.PutUint32(b[o+8:], k.Index)
	}
	return b
}

func decodeLocateReq(b []byte) ([]PageKey, error) {
	if len(b) < 4 {
		return nil, wireErr("locate request of %d bytes", len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if n > maxLocate {
		return nil, wireErr("locate request of %d pages exceeds %d", n, maxLocate)
	}
	if uint64(len(b)) != 4+locateEntry*uint64(n) {
		return nil, wireErr("locate request of %d bytes for %d pages", len(b), n)
	}
	keys := make([]PageKey, n)
	for i := range keys {
		o := 4 + locateEntry*i
		keys[i] = PageKey{Block: binary.LittleEndian.Uint64(b[o:]), Index: binary.LittleEndian.Uint32(b[o+8:])}
	}
	return keys, nil
}

func encodeLocateResp(states []uint8) []byte {
	b := make([]byte, 4+len(states))
	binary.LittleEndian.PutUint32(b, uint32(len(states)))
	copy(b[4:], states)
	return b
}

func decodeLocateResp(b []byte, want int) ([]uint8, error) {
	if len(b) < 4 {
		return nil, wireErr("locate response of %d bytes", len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if int64(n) != int64(want) || len(b) != 4+want {
		return nil, wireErr("locate response of %d bytes for %d pages (asked %d)", len(b), n, want)
	}
	states := b[4:]
	for _, s := range states {
		if s&^(locMemory|locDisk) != 0 {
			return nil, wireErr("locate response: unknown state 0x%02x", s)
		}
	}
	return states, nil
}

func encodeWarmReq(block uint64, blockLen int) []byte {
	b := make([]byte, warmReqSize)
	binary.LittleEndian.PutUint64(b, block)
	binary.LittleEndian.PutUint32(b[8:], uint32(blockLen))
	return b
}

func decodeWarmReq(b []byte, blockSize int) (uint64, int, error) {
	if len(b) != warmReqSize {
		return 0, 0, wireErr("warm request of %d bytes, want %d", len(b), warmReqSize)
	}
	if binary.LittleEndian.Uint32(b[12:]) != 0 {
		return 0, 0, wireErr("warm request: reserved bytes set")
	}
	n := binary.LittleEndian.Uint32(b[8:])
	if n == 0 || int64(n) > int64(blockSize) {
		return 0, 0, wireErr("warm request: block length %d outside 1..%d", n, blockSize)
	}
	return binary.LittleEndian.Uint64(b), int(n), nil
}

func encodeWarmResp(pages int, fetched bool) []byte {
	b := make([]byte, warmRespSize)
	binary.LittleEndian.PutUint32(b, uint32(pages))
	if fetched {
		b[4] = 1
	}
	return b
}

func decodeWarmResp(b []byte, maxPages int) (int, bool, error) {
	if len(b) != warmRespSize {
		return 0, false, wireErr("warm response of %d bytes, want %d", len(b), warmRespSize)
	}
	if b[4] > 1 || b[5]|b[6]|b[7] != 0 {
		return 0, false, wireErr("warm response: reserved bytes set")
	}
	n := binary.LittleEndian.Uint32(b)
	if int64(n) > int64(maxPages) {
		return 0, false, wireErr("warm response: %d pages, a block has at most %d", n, maxPages)
	}
	return int(n), b[4] == 1, nil
}

// checkSlot checks a slot read one-sidedly (header then page) against the
// key and location expected.
func checkSlot(b []byte, key PageKey, loc SlotLocation, table *crc32.Table) error {
	if len(b) < slotHeaderSize {
		return wireErr("slot of %d bytes", len(b))
	}
	n := binary.LittleEndian.Uint32(b[hdrLength:])
	switch {
	case binary.LittleEndian.Uint64(b[hdrBlock:]) != key.Block || binary.LittleEndian.Uint32(b[hdrIndex:]) != key.Index:
		return wireErr("slot holds another page")
	case binary.LittleEndian.Uint64(b[hdrGeneration:]) != loc.Generation:
		return wireErr("slot was refilled")
	case n != loc.Length || uint64(len(b)) != slotHeaderSize+uint64(n):
		return wireErr("slot length %d, expected %d", n, loc.Length)
	case crc32.Checksum(b[slotHeaderSize:], table) != binary.LittleEndian.Uint32(b[hdrChecksum:]):
		return wireErr("slot checksum mismatch")
	}
	return nil
}
