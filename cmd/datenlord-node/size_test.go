package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "4096", want: 4096},
		{in: "0", want: 0},
		{in: "512B", want: 512},
		{in: "64KiB", want: 64 << 10},
		{in: "64k", want: 64 << 10},
		{in: "512MiB", want: 512 << 20},
		{in: "512M", want: 512 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "1G", want: 1 << 30},
		{in: "1gib", want: 1 << 30},
		{in: "2TiB", want: 2 << 40},
		{in: " 8 MiB ", want: 8 << 20},
		{in: "", wantErr: "want a whole number"},
		{in: "MiB", wantErr: "want a whole number"},
		{in: "-1", wantErr: "want a whole number"},
		{in: "1.5GiB", wantErr: "unknown unit"},
		{in: "1GB", wantErr: `unknown unit "GB"`},
		{in: "12XB", wantErr: "unknown unit"},
		{in: "9999999999TiB", wantErr: "too large"},
		{in: "99999999999999999999", wantErr: "too large"},
	} {
		got, err := parseSize(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseSize(%q) = %d, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatSizeRoundTrips(t *testing.T) {
	for _, n := range []int64{0, 1, 4095, 4096, 64 << 10, 512 << 10, 3 << 20, 1 << 30, 5 << 40, 1<<40 + 1} {
		s := formatSize(n)
		back, err := parseSize(s)
		if err != nil || back != n {
			t.Errorf("parseSize(formatSize(%d) = %q) = %d, %v", n, s, back, err)
		}
	}
	if got := formatSize(512 << 10); got != "512KiB" {
		t.Errorf("formatSize(512KiB) = %q", got)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4096", "64KiB", "1G", "1GB", "", "9999999999TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("parseSize(%q) = %d < 0", s, n)
		}
		if back, err := parseSize(formatSize(n)); err != nil || back != n {
			t.Fatalf("round trip of %d via %q: %d, %v", n, formatSize(n), back, err)
		}
	})
}
