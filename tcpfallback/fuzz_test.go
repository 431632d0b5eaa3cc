package tcpfallback

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"testing"
)

// fuzzSeedFrames are meaningful starting points for FuzzDecodeFrame (the
// same inputs are checked in under testdata/fuzz/FuzzDecodeFrame).
func fuzzSeedFrames() [][]byte {
	req := encodeFrame(header{op: opEcho, id: 1, flags: flagRequest, deadline: 1700000000000000000}, []byte("hello"))
	resp := encodeFrame(header{op: opEcho, id: 1, flags: flagResponse}, bytes.Repeat([]byte{7}, 100))
	errResp := encodeFrame(header{op: opEcho, id: 2, flags: flagResponse | flagError}, []byte("\x02\x00\x00\x00no such file"))
	cancel := encodeFrame(header{op: opEcho, id: 3, flags: flagCancel}, nil)
	badCRC := bytes.Clone(req)
	badCRC[len(badCRC)-1] ^= 1
	oversized := bytes.Clone(req[:headerSize])
	binary.LittleEndian.PutUint32(oversized[0:], 0xffffffff)
	binary.LittleEndian.PutUint32(oversized[28:], 0xffffffdf)
	return [][]byte{
		append(append(bytes.Clone(req), resp...), cancel...),
		errResp,
		badCRC,
		oversized,
		req[:headerSize-1],
		{},
	}
}

// FuzzDecodeFrame feeds arbitrary bytes to the frame reader the server and
// client use: it must never panic nor allocate beyond MaxFrame.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range fuzzSeedFrames() {
		f.Add(s)
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	const maxFrame = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = decodeHeader(data, maxFrame)
		_ = decodeRemoteError(data)
		fr := newFrameReader(nil, bytes.NewReader(data), maxFrame, 0, table)
		for i := 0; ; i++ {
			h, err := fr.readHeader()
			if err != nil {
				return
			}
			if h.length > maxFrame {
				t.Fatalf("accepted payload length %d > MaxFrame", h.length)
			}
			switch {
			case h.flags == flagCancel:
				err = fr.readTrailer()
			case i%2 == 0:
				err = fr.readPayload(make([]byte, h.length))
			default:
				err = fr.discardPayload(h.length)
			}
			if err != nil {
				return
			}
		}
	})
}

type fuzzRW struct {
	io.Reader
	io.Writer
}

// FuzzHandshake feeds arbitrary bytes to both sides of the handshake and
// to its decoders: no panic, and no input authenticates without the
// secret.
func FuzzHandshake(f *testing.F) {
	h := hello{kind: kindRPC, nodeID: "node-1"}
	f.Add(h.encode())
	f.Add(append(h.encode(), make([]byte, proofSize)...))
	s := hello{kind: "raft", nodeID: "n"}
	f.Add(append(s.encode(), bytes.Repeat([]byte{0xff}, proofSize)...))
	var nonce [nonceSize]byte
	f.Add(append(encodeChallenge(nonce), (&accept{status: statusOK, nodeID: "srv"}).encode()...))
	f.Add([]byte("DLNK\x01\xff\xff\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = decodeHello(data)
		_, _, _ = decodeHelloFixed(data)
		_, _ = decodeChallenge(data)
		_, _ = decodeAccept(data)
		if _, err := serverHandshake(fuzzRW{bytes.NewReader(data), io.Discard}, testSecret, "server", func(string) bool { return true }); err == nil {
			t.Fatal("fuzz input authenticated against the server")
		}
		if _, err := clientHandshake(fuzzRW{bytes.NewReader(data), io.Discard}, testSecret, "client", kindRPC); err == nil {
			t.Fatal("fuzz input authenticated as a server")
		}
	})
}
