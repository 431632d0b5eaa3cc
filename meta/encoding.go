package meta

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
)

// Key prefixes of the state machine database. Every integer in a key is
// big-endian so that byte order is numeric order.
const (
	prefixInode   = 'i' // i ino -> inode record
	prefixDentry  = 'd' // d parent name -> child ino, type bits
	prefixBlock   = 'b' // b ino index -> block id, len
	prefixXattr   = 'x' // x ino name -> value
	prefixOrphan  = 'o' // o ino -> (empty)
	prefixGarbage = 'g' // g freedAt id -> (empty), oldest first
	prefixGarbID  = 'G' // G id -> freedAt, to forget by id
	prefixDedup   = 'r' // r origin 0x00 seq -> index u64, result
	prefixExpiry  = 'e' // e index origin 0x00 seq -> (empty), oldest first
	prefixKV      = 'k' // k key -> the KV machine's own keyspace (kv.go)
	keyCounters   = "mcounters"
)

func u64Key(prefix byte, v uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], v)
	return k
}

func inodeKey(ino Ino) []byte     { return u64Key(prefixInode, uint64(ino)) }
func orphanKey(ino Ino) []byte    { return u64Key(prefixOrphan, uint64(ino)) }
func garbIDKey(id BlockID) []byte { return u64Key(prefixGarbID, uint64(id)) }

func dentryPrefix(parent Ino) []byte { return u64Key(prefixDentry, uint64(parent)) }

func dentryKey(parent Ino, name string) []byte {
	return append(dentryPrefix(parent), name...)
}

func blockPrefix(ino Ino) []byte { return u64Key(prefixBlock, uint64(ino)) }

func blockKey(ino Ino, index uint64) []byte {
	return binary.BigEndian.AppendUint64(blockPrefix(ino), index)
}

func xattrPrefix(ino Ino) []byte { return u64Key(prefixXattr, uint64(ino)) }

func xattrKey(ino Ino, name string) []byte { return append(xattrPrefix(ino), name...) }

func garbageKey(freedAt uint64, id BlockID) []byte {
	return binary.BigEndian.AppendUint64(u64Key(prefixGarbage, freedAt), uint64(id))
}

// inodeRecordVersion is the first byte of every inode record.
const inodeRecordVersion = 1

// inodeFixedLen is the length of an inode record without the symlink target.
const inodeFixedLen = 1 + 4*5 + 8*6

// encodeInode encodes an inode (without its number, which is the key).
// Layout: version u8, mode, uid, gid, nlink, rdev u32, size, atime, mtime,
// ctime, version, parent u64, then the symlink target to the end.
func encodeInode(a *Attr, target string) []byte {
	b := make([]byte, 0, inodeFixedLen+len(target))
	b = append(b, inodeRecordVersion)
	for _, v := range [...]uint32{a.Mode, a.Uid, a.Gid, a.Nlink, a.Rdev} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	for _, v := range [...]uint64{a.Size, uint64(a.Atime), uint64(a.Mtime), uint64(a.Ctime), a.Version, uint64(a.Parent)} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return append(b, target...)
}

// decodeInode decodes an inode record of inode ino.
func decodeInode(ino Ino, b []byte) (Attr, string, error) {
	if len(b) < inodeFixedLen {
		return Attr{}, "", fmt.Errorf("inode %d: short record (%d bytes)", ino, len(b))
	}
	if b[0] != inodeRecordVersion {
		return Attr{}, "", fmt.Errorf("inode %d: unknown record version %d", ino, b[0])
	}
	u32 := func(i int) uint32 { return binary.BigEndian.Uint32(b[1+4*i:]) }
	u64 := func(i int) uint64 { return binary.BigEndian.Uint64(b[21+8*i:]) }
	a := Attr{
		Ino: ino, Mode: u32(0), Uid: u32(1), Gid: u32(2), Nlink: u32(3), Rdev: u32(4),
		Size: u64(0), Atime: int64(u64(1)), Mtime: int64(u64(2)), Ctime: int64(u64(3)),
		Version: u64(4), Parent: Ino(u64(5)),
	}
	return a, string(b[inodeFixedLen:]), nil
}

// encodeDentry encodes a directory entry value: child ino u64, type bits u32.
func encodeDentry(ino Ino, mode uint32) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), uint64(ino))
	return binary.BigEndian.AppendUint32(b, mode&syscall.S_IFMT)
}

func decodeDentry(b []byte) (Ino, uint32, error) {
	if len(b) != 12 {
		return 0, 0, fmt.Errorf("dentry: bad record of %d bytes", len(b))
	}
	return Ino(binary.BigEndian.Uint64(b)), binary.BigEndian.Uint32(b[8:]), nil
}

// encodeBlockRef encodes a block map value: id u64, len u32.
func encodeBlockRef(r BlockRef) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), uint64(r.ID))
	return binary.BigEndian.AppendUint32(b, r.Len)
}

func decodeBlockRef(b []byte) (BlockRef, error) {
	if len(b) != 12 {
		return BlockRef{}, fmt.Errorf("block ref: bad record of %d bytes", len(b))
	}
	return BlockRef{ID: BlockID(binary.BigEndian.Uint64(b)), Len: binary.BigEndian.Uint32(b[8:])}, nil
}

// counters are the state machine's scalars, kept in one record that every
// command rewrites together with its effects. Applied is the Raft index of
// the last applied command: the idempotence mark.
type counters struct {
	Applied   uint64
	NextIno   uint64
	NextBlock uint64
	BlockSize uint64
	Inodes    uint64
	UsedBytes uint64
}

const countersLen = 6 * 8

func (c *counters) encode() []byte {
	b := make([]byte, 0, countersLen)
	for _, v := range [...]uint64{c.Applied, c.NextIno, c.NextBlock, c.BlockSize, c.Inodes, c.UsedBytes} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

func decodeCounters(b []byte) (counters, error) {
	if len(b) != countersLen {
		return counters{}, fmt.Errorf("counters: bad record of %d bytes", len(b))
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[8*i:]) }
	return counters{Applied: u(0), NextIno: u(1), NextBlock: u(2), BlockSize: u(3), Inodes: u(4), UsedBytes: u(5)}, nil
}

// op names a command kind.
type op uint8

const (
	opInvalid op = iota
	opBootstrap
	opCreate
	opSetAttr
	opLink
	opUnlink
	opRmdir
	opRename
	opCommitWrite
	opAllocBlocks
	opPurge
	opForgetGarbage
	opSetXattr
	opRemoveXattr
	opKV        // an opaque request of the KV machine in Value (kv.go)
	opPutObject // create, fill and link a file in one command (objects.go)
	opMax       // not a command; the upper bound
)

// commandVersion is the first byte of every encoded command.
const commandVersion = 1

// command is one Raft log entry: one metadata mutation. It is encoded as a
// version byte followed by JSON (commandVersion), except KV commands,
// which have a binary encoding (commandVersionKV); only the fields of its
// Op are set. Now is
// the proposer's clock: the state machine never reads the clock itself.
type command struct {
	Op        op              `json:"op"`
	Now       int64           `json:"now,omitempty"`
	Ino       Ino             `json:"ino,omitempty"`
	Parent    Ino             `json:"p,omitempty"`
	Name      string          `json:"n,omitempty"`
	NewParent Ino             `json:"np,omitempty"`
	NewName   string          `json:"nn,omitempty"`
	Flags     uint32          `json:"f,omitempty"`
	N         uint64          `json:"cnt,omitempty"`
	Value     []byte          `json:"v,omitempty"`
	IDs       []BlockID       `json:"ids,omitempty"`
	Create    *CreateRequest  `json:"c,omitempty"`
	SetAttr   *SetAttrRequest `json:"sa,omitempty"`
	Write     *WriteCommit    `json:"w,omitempty"`
	BlockSize uint32          `json:"bs,omitempty"`
	// IfNew makes a bootstrap a no-op on a namespace that exists,
	// whatever its block size (the marker a new leader commits).
	IfNew bool `json:"in,omitempty"`
	// Origin and Seq identify a command across retries: the proposing
	// node's id and a sequence number unique on that node. A command
	// with an id that the state machine applied recently is not applied
	// again; the first outcome is returned (see dedup.go).
	Origin string `json:"o,omitempty"`
	Seq    uint64 `json:"q,omitempty"`

	// Put is the request of opPutObject (objects.go).
	Put *PutObjectRequest `json:"po,omitempty"`
}

// commandVersionKV is the first byte of a KV command (opKV) in its binary
// encoding: the KV interface's writes are the hot path and carry opaque
// bytes, which JSON would base64. Layout after the version byte: Now i64,
// Seq u64, len(Origin) uvarint, Origin, then the request (Value) to the
// end. Other fields of an opKV command are not encoded.
const commandVersionKV = 2

// kvHeaderMax bounds the binary KV command header: version, Now, Seq and
// a uvarint of the origin length.
const kvHeaderMax = 1 + 8 + 8 + binary.MaxVarintLen64

func encodeCommand(c *command) ([]byte, error) {
	if c.Op == opKV {
		b := make([]byte, 0, kvHeaderMax+len(c.Origin)+len(c.Value))
		b = append(b, commandVersionKV)
		b = binary.BigEndian.AppendUint64(b, uint64(c.Now))
		b = binary.BigEndian.AppendUint64(b, c.Seq)
		b = binary.AppendUvarint(b, uint64(len(c.Origin)))
		b = append(b, c.Origin...)
		return append(b, c.Value...), nil
	}
	j, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", c.Op, err)
	}
	return append([]byte{commandVersion}, j...), nil
}

var errBadCommand = errors.New("malformed command")

// decodeCommand decodes and checks the shape of a command. It never panics
// on arbitrary input.
func decodeCommand(b []byte) (*command, error) {
	if len(b) > 0 && b[0] == commandVersionKV {
		return decodeKVCommand(b)
	}
	if len(b) < 1 || b[0] != commandVersion {
		return nil, fmt.Errorf("%w: unknown version", errBadCommand)
	}
	var c command
	if err := json.Unmarshal(b[1:], &c); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadCommand, err)
	}
	if c.Op <= opInvalid || c.Op >= opMax {
		return nil, fmt.Errorf("%w: unknown op %d", errBadCommand, c.Op)
	}
	switch {
	case c.Op == opCreate && c.Create == nil,
		c.Op == opSetAttr && c.SetAttr == nil,
		c.Op == opCommitWrite && c.Write == nil:
		return nil, fmt.Errorf("%w: op %d without its request", errBadCommand, c.Op)
	}
	return &c, nil
}

// decodeKVCommand decodes a binary KV command (commandVersionKV). Value
// aliases b. It never panics on arbitrary input.
func decodeKVCommand(b []byte) (*command, error) {
	const fixed = 1 + 8 + 8
	if len(b) < fixed {
		return nil, fmt.Errorf("%w: short KV command (%d bytes)", errBadCommand, len(b))
	}
	c := &command{Op: opKV, Now: int64(binary.BigEndian.Uint64(b[1:])), Seq: binary.BigEndian.Uint64(b[9:])}
	rest := b[fixed:]
	n, w := binary.Uvarint(rest)
	if w <= 0 || n > uint64(len(rest)-w) {
		return nil, fmt.Errorf("%w: bad origin length in KV command", errBadCommand)
	}
	rest = rest[w:]
	c.Origin = string(rest[:n])
	if c.Value = rest[n:]; len(c.Value) == 0 {
		c.Value = nil
	}
	return c, nil
}

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
