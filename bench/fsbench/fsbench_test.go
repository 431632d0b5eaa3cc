package fsbench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestRunTempDir(t *testing.T) {
	dir := t.TempDir()
	res, err := Run(context.Background(), Config{Path: dir, Threads: 2, BigFileSize: 1 << 20, BlockSize: 64 << 10,
		RandomOps: 50, SmallFileSize: 4 << 10, SmallFiles: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 8 {
		t.Fatalf("%d items, want 8: %+v", len(res.Items), res.Items)
	}
	for _, it := range res.Items {
		if it.Value <= 0 || it.Ops == 0 {
			t.Errorf("%s: nothing measured: %+v", it.Name, it)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("scratch directory left behind: %v", ents)
	}
	var tab bytes.Buffer
	if err := WriteTable(&tab, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Write big file", "Random read 4 KiB", "Unlink file", "MiB/s", "files/s"} {
		if !strings.Contains(tab.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tab.String())
		}
	}
	var js bytes.Buffer
	if err := WriteJSON(&js, res); err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Items) != 8 {
		t.Fatalf("JSON round trip: %v, %d items", err, len(back.Items))
	}
}
