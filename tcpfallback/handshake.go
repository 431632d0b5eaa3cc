package tcpfallback

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Handshake constants; see the package doc.
const (
	helloMagic    = "DLNK"
	protoVersion  = 1
	nonceSize     = 32
	proofSize     = sha256.Size
	helloFixed    = 4 + 1 + 1 + 1 + 1 + nonceSize // magic, version, kind len, id len, reserved, nonce
	challengeSize = 4 + 1 + 3 + nonceSize         // magic, version, reserved, nonce
	maxKind       = 32
	maxNodeID     = 128
	maxHello      = helloFixed + maxKind + maxNodeID

	// kindRPC is the connection kind of the framed RPC.
	kindRPC = "rpc"

	statusOK          = 0
	statusUnknownKind = 1

	clientLabel = "datenlord tcpfallback v1 client proof"
	serverLabel = "datenlord tcpfallback v1 server proof"
)

// errHandshake is the generic cause of every failed handshake on the
// serving side; details go to the log only.
var errHandshake = errors.New("handshake failed")

// hello is the first message of a connection, client to server.
type hello struct {
	kind   string
	nodeID string
	nonce  [nonceSize]byte
}

func (h *hello) encode() []byte {
	b := make([]byte, 0, helloFixed+len(h.kind)+len(h.nodeID))
	b = append(b, helloMagic...)
	b = append(b, protoVersion, byte(len(h.kind)), byte(len(h.nodeID)), 0)
	b = append(b, h.nonce[:]...)
	b = append(b, h.kind...)
	return append(b, h.nodeID...)
}

// decodeHelloFixed validates the fixed part of a hello and returns the
// length of the variable part that follows.
func decodeHelloFixed(b []byte) (kindLen, idLen int, err error) {
	if len(b) < helloFixed {
		return 0, 0, fmt.Errorf("hello of %d bytes", len(b))
	}
	if string(b[:4]) != helloMagic {
		return 0, 0, errors.New("bad hello magic")
	}
	if b[4] != protoVersion {
		return 0, 0, fmt.Errorf("protocol version %d, want %d", b[4], protoVersion)
	}
	kindLen, idLen = int(b[5]), int(b[6])
	if kindLen == 0 || kindLen > maxKind || idLen == 0 || idLen > maxNodeID || b[7] != 0 {
		return 0, 0, fmt.Errorf("hello with kind length %d, id length %d", kindLen, idLen)
	}
	return kindLen, idLen, nil
}

// decodeHello decodes a complete hello.
func decodeHello(b []byte) (hello, error) {
	kindLen, idLen, err := decodeHelloFixed(b)
	if err != nil {
		return hello{}, err
	}
	if len(b) != helloFixed+kindLen+idLen {
		return hello{}, fmt.Errorf("hello of %d bytes, want %d", len(b), helloFixed+kindLen+idLen)
	}
	var h hello
	copy(h.nonce[:], b[8:helloFixed])
	h.kind = string(b[helloFixed : helloFixed+kindLen])
	h.nodeID = string(b[helloFixed+kindLen:])
	if err := validName(h.kind, maxKind); err != nil {
		return hello{}, fmt.Errorf("kind: %w", err)
	}
	if err := validName(h.nodeID, maxNodeID); err != nil {
		return hello{}, fmt.Errorf("node id: %w", err)
	}
	return h, nil
}

// validName accepts printable ASCII without spaces, so names are safe in
// logs and metric labels.
func validName(s string, max int) error {
	if len(s) == 0 || len(s) > max {
		return fmt.Errorf("length %d not in [1, %d]", len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("invalid byte 0x%02x", c)
		}
	}
	return nil
}

func encodeChallenge(nonce [nonceSize]byte) []byte {
	b := make([]byte, 0, challengeSize)
	b = append(b, helloMagic...)
	b = append(b, protoVersion, 0, 0, 0)
	return append(b, nonce[:]...)
}

func decodeChallenge(b []byte) ([nonceSize]byte, error) {
	var n [nonceSize]byte
	if len(b) != challengeSize || string(b[:4]) != helloMagic {
		return n, errors.New("bad challenge")
	}
	if b[4] != protoVersion || b[5]|b[6]|b[7] != 0 {
		return n, fmt.Errorf("challenge with protocol version %d", b[4])
	}
	copy(n[:], b[8:])
	return n, nil
}

// accept is the server's answer to a valid client proof.
type accept struct {
	status byte
	nodeID string
	proof  [proofSize]byte
}

func (a *accept) encode() []byte {
	b := make([]byte, 0, 2+len(a.nodeID)+proofSize)
	b = append(b, a.status, byte(len(a.nodeID)))
	b = append(b, a.nodeID...)
	return append(b, a.proof[:]...)
}

// decodeAcceptPrefix returns the length of the rest of an accept message
// from its first two bytes.
func decodeAcceptPrefix(b []byte) (int, error) {
	if len(b) != 2 {
		return 0, errors.New("short accept")
	}
	if b[0] > statusUnknownKind || b[1] == 0 || int(b[1]) > maxNodeID {
		return 0, fmt.Errorf("accept with status %d, id length %d", b[0], b[1])
	}
	return int(b[1]) + proofSize, nil
}

func decodeAccept(b []byte) (accept, error) {
	if len(b) < 2 {
		return accept{}, errors.New("short accept")
	}
	rest, err := decodeAcceptPrefix(b[:2])
	if err != nil {
		return accept{}, err
	}
	if len(b) != 2+rest {
		return accept{}, fmt.Errorf("accept of %d bytes, want %d", len(b), 2+rest)
	}
	a := accept{status: b[0], nodeID: string(b[2 : len(b)-proofSize])}
	copy(a.proof[:], b[len(b)-proofSize:])
	if err := validName(a.nodeID, maxNodeID); err != nil {
		return accept{}, fmt.Errorf("node id: %w", err)
	}
	return a, nil
}

// proof computes a role-labelled HMAC over both nonces, the node ids and
// the kind: a fresh server nonce defeats replay, the role label defeats
// reflection, and the kind binds the proof to what is being opened.
func proof(secret []byte, label string, serverNonce, clientNonce [nonceSize]byte, clientID, serverID, kind string, status byte) [proofSize]byte {
	m := hmac.New(sha256.New, secret)
	writeField(m, []byte(label))
	writeField(m, serverNonce[:])
	writeField(m, clientNonce[:])
	writeField(m, []byte(clientID))
	writeField(m, []byte(serverID))
	writeField(m, []byte(kind))
	writeField(m, []byte{status})
	var p [proofSize]byte
	m.Sum(p[:0])
	return p
}

func writeField(h hash.Hash, b []byte) {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	h.Write(l[:])
	h.Write(b)
}

// serverHandshake authenticates the client on rw; the caller bounds its
// time with a deadline. hasKind reports whether a stream kind has a
// listener. Nothing is written before the hello parsed, and nothing but a
// random nonce before the client's proof verified.
func serverHandshake(rw io.ReadWriter, secret []byte, nodeID string, hasKind func(string) bool) (hello, error) {
	var fixed [maxHello]byte
	if _, err := io.ReadFull(rw, fixed[:helloFixed]); err != nil {
		return hello{}, fmt.Errorf("read hello: %w", err)
	}
	kindLen, idLen, err := decodeHelloFixed(fixed[:helloFixed])
	if err != nil {
		return hello{}, err
	}
	n := helloFixed + kindLen + idLen
	if _, err := io.ReadFull(rw, fixed[helloFixed:n]); err != nil {
		return hello{}, fmt.Errorf("read hello: %w", err)
	}
	h, err := decodeHello(fixed[:n])
	if err != nil {
		return hello{}, err
	}
	var sn [nonceSize]byte
	if _, err := rand.Read(sn[:]); err != nil {
		return hello{}, fmt.Errorf("nonce: %w", err)
	}
	if _, err := rw.Write(encodeChallenge(sn)); err != nil {
		return hello{}, fmt.Errorf("write challenge: %w", err)
	}
	var got [proofSize]byte
	if _, err := io.ReadFull(rw, got[:]); err != nil {
		return hello{}, fmt.Errorf("read proof: %w", err)
	}
	want := proof(secret, clientLabel, sn, h.nonce, h.nodeID, "", h.kind, 0)
	if !hmac.Equal(got[:], want[:]) {
		return hello{}, fmt.Errorf("node %q: %w", h.nodeID, ErrUnauthenticated)
	}
	a := accept{status: statusOK, nodeID: nodeID}
	if h.kind != kindRPC && !hasKind(h.kind) {
		a.status = statusUnknownKind
	}
	a.proof = proof(secret, serverLabel, sn, h.nonce, h.nodeID, nodeID, h.kind, a.status)
	if _, err := rw.Write(a.encode()); err != nil {
		return hello{}, fmt.Errorf("write accept: %w", err)
	}
	if a.status != statusOK {
		return hello{}, fmt.Errorf("no listener for stream kind %q", h.kind)
	}
	return h, nil
}

// clientHandshake proves our knowledge of the secret and checks the
// server's proof; it returns the server's node id.
func clientHandshake(rw io.ReadWriter, secret []byte, nodeID, kind string) (string, error) {
	h := hello{kind: kind, nodeID: nodeID}
	if _, err := rand.Read(h.nonce[:]); err != nil {
		return "", fmt.Errorf("nonce: %w", err)
	}
	if _, err := rw.Write(h.encode()); err != nil {
		return "", fmt.Errorf("write hello: %w", err)
	}
	var buf [challengeSize]byte
	if _, err := io.ReadFull(rw, buf[:]); err != nil {
		return "", fmt.Errorf("read challenge: %w", err)
	}
	sn, err := decodeChallenge(buf[:])
	if err != nil {
		return "", err
	}
	p := proof(secret, clientLabel, sn, h.nonce, nodeID, "", kind, 0)
	if _, err := rw.Write(p[:]); err != nil {
		return "", fmt.Errorf("write proof: %w", err)
	}
	var ab [2 + maxNodeID + proofSize]byte
	if _, err := io.ReadFull(rw, ab[:2]); err != nil {
		// The server closes without a word when our proof is wrong.
		return "", fmt.Errorf("%w: peer closed the connection during authentication (%v)", ErrUnauthenticated, err)
	}
	rest, err := decodeAcceptPrefix(ab[:2])
	if err != nil {
		return "", err
	}
	if _, err := io.ReadFull(rw, ab[2:2+rest]); err != nil {
		return "", fmt.Errorf("read accept: %w", err)
	}
	a, err := decodeAccept(ab[:2+rest])
	if err != nil {
		return "", err
	}
	want := proof(secret, serverLabel, sn, h.nonce, nodeID, a.nodeID, kind, a.status)
	if !hmac.Equal(a.proof[:], want[:]) {
		return "", fmt.Errorf("%w: server %q failed to prove the cluster secret", ErrUnauthenticated, a.nodeID)
	}
	if a.status == statusUnknownKind {
		return "", fmt.Errorf("peer %q has no listener for stream kind %q", a.nodeID, kind)
	}
	return a.nodeID, nil
}
