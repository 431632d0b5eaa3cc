package cache

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"testing"
)

// Hot-path micro-benchmarks, each per page and allocation-free in steady
// state: a memory-tier hit at several page sizes, the slot check a
// neighbor runs on a slot it read one-sidedly (key, generation, length,
// CRC-32C), and the NVMe tier's slot header encode/decode.

// BenchmarkPageLookup is a memory-tier hit through Cache.ReadPage (lock,
// index lookup, policy touch, copy, CRC-32C check) per page size, over
// 64 resident pages.
func BenchmarkPageLookup(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 512 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			c, err := New(Config{PageSize: size, MemBytes: 80 * int64(slotHeaderSize+size)}, newBackend(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = c.Close() })
			ctx := context.Background()
			c.PutBlock(ctx, 1, make([]byte, 64*size), AccessRandom)
			dst := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			i := uint32(0)
			for b.Loop() {
				if _, err := c.ReadPage(ctx, PageKey{1, i % 64}, size, dst, AccessRandom); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkSlotCheck validates a memory slot (header and page) as a
// neighbor does after a one-sided read.
func BenchmarkSlotCheck(b *testing.B) {
	table := crc32.MakeTable(crc32.Castagnoli)
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			slot := make([]byte, slotHeaderSize+size)
			key := PageKey{Block: 42, Index: 3}
			page := slot[slotHeaderSize:]
			for i := range page {
				page[i] = byte(i * 7)
			}
			binary.LittleEndian.PutUint64(slot[hdrBlock:], key.Block)
			binary.LittleEndian.PutUint32(slot[hdrIndex:], key.Index)
			binary.LittleEndian.PutUint32(slot[hdrLength:], uint32(size))
			binary.LittleEndian.PutUint64(slot[hdrGeneration:], 9)
			binary.LittleEndian.PutUint32(slot[hdrChecksum:], crc32.Checksum(page, table))
			loc := SlotLocation{Generation: 9, Length: uint32(size)}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := checkSlot(slot, key, loc, table); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDiskSlotHeader encodes and decodes an NVMe slot header (the
// page CRC-32C over 64 KiB dominates the encode).
func BenchmarkDiskSlotHeader(b *testing.B) {
	t := &DiskTier{cfg: DiskConfig{PageSize: 64 << 10}, crc: crc32.MakeTable(crc32.Castagnoli)}
	h := make([]byte, diskBlockSize)
	page := make([]byte, 64<<10)
	key := PageKey{Block: 7, Index: 1}
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(int64(len(page)))
		b.ReportAllocs()
		for b.Loop() {
			t.encodeHeader(h, key, page, 3)
		}
	})
	b.Run("decode", func(b *testing.B) {
		t.encodeHeader(h, key, page, 3)
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := t.decodeHeader(h); !ok {
				b.Fatal("header did not decode")
			}
		}
	})
}
