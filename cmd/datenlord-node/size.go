package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Binary size units. Sizes on the command line are always binary: "1G" and
// "1GiB" both mean 2^30 bytes.
const (
	kib int64 = 1 << 10
	mib int64 = 1 << 20
	gib int64 = 1 << 30
	tib int64 = 1 << 40
)

// sizeUnit returns the multiplier of a size suffix (already lower-cased).
// Decimal suffixes (KB, MB, ...) are rejected on purpose: they are
// ambiguous, and reading "1GB" as either 10^9 or 2^30 surprises half the
// users.
func sizeUnit(unit string) (int64, bool) {
	switch unit {
	case "", "b":
		return 1, true
	case "k", "kib":
		return kib, true
	case "m", "mib":
		return mib, true
	case "g", "gib":
		return gib, true
	case "t", "tib":
		return tib, true
	}
	return 0, false
}

// parseSize parses a byte size: a whole number followed by an optional
// binary unit (B, K/KiB, M/MiB, G/GiB, T/TiB; case-insensitive), such as
// "4096", "64KiB", "512MiB" or "1G". The result is at least 0.
func parseSize(s string) (int64, error) {
	str := strings.TrimSpace(s)
	i := 0
	for i < len(str) && str[i] >= '0' && str[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes with an optional unit, such as 4096, 64KiB, 512MiB or 1GiB", s)
	}
	unit := strings.ToLower(strings.TrimSpace(str[i:]))
	mult, ok := sizeUnit(unit)
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KiB, MiB, GiB or TiB; K, M, G and T are binary too)", s, str[i:])
	}
	n, err := strconv.ParseInt(str[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mult, nil
}

// formatSize renders n with the largest binary unit that divides it exactly,
// so that formatSize(parseSize(x)) round-trips: 524288 -> "512KiB".
func formatSize(n int64) string {
	for _, u := range []struct {
		mult int64
		name string
	}{{tib, "TiB"}, {gib, "GiB"}, {mib, "MiB"}, {kib, "KiB"}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// sizeValue is a pflag.Value holding a byte size parsed by parseSize.
type sizeValue struct{ n *int64 }

// newSizeValue stores def in *p and returns a flag value that updates *p.
func newSizeValue(p *int64, def int64) sizeValue {
	*p = def
	return sizeValue{n: p}
}

// String renders the size with the largest exact binary unit.
func (v sizeValue) String() string {
	if v.n == nil {
		return "0"
	}
	return formatSize(*v.n)
}

// Set parses s with parseSize.
func (v sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v.n = n
	return nil
}

// Type names the value type in help output.
func (v sizeValue) Type() string { return "size" }
