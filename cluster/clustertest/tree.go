package clustertest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Entry is one file of a tree listing: what two nodes must agree on.
type Entry struct {
	Path   string      // relative to the listed root, with /
	Type   fs.FileMode // fs.ModeDir, fs.ModeSymlink, 0 for a regular file
	Size   int64       // 0 for directories
	Mode   fs.FileMode // permission bits
	SHA256 string      // of the content (regular files), or the link target
}

// String renders the entry as one line of a listing.
func (e Entry) String() string {
	return fmt.Sprintf("%s %v %o %d %s", e.Path, e.Type, e.Mode, e.Size, e.SHA256)
}

// ListTree lists every file under root (root itself excluded), sorted by
// path, with type, size, permission bits and a content hash.
func ListTree(root string) ([]Entry, error) {
	var out []Entry
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root {
			return nil
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		e := Entry{Path: filepath.ToSlash(rel), Type: info.Mode().Type(), Mode: info.Mode().Perm()}
		switch {
		case info.Mode().IsRegular():
			e.Size = info.Size()
			if e.SHA256, err = hashFile(path); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			e.SHA256 = "-> " + target
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// hashFile returns the hex SHA-256 of a file's content.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// DiffTrees describes how listing b differs from listing a ("" if equal).
func DiffTrees(a, b []Entry) string {
	am, bm := map[string]Entry{}, map[string]Entry{}
	for _, e := range a {
		am[e.Path] = e
	}
	for _, e := range b {
		bm[e.Path] = e
	}
	var diffs []string
	for _, e := range a {
		if o, ok := bm[e.Path]; !ok {
			diffs = append(diffs, "- "+e.String())
		} else if o != e {
			diffs = append(diffs, "~ "+e.String()+"  =>  "+o.String())
		}
	}
	for _, e := range b {
		if _, ok := am[e.Path]; !ok {
			diffs = append(diffs, "+ "+e.String())
		}
	}
	if len(diffs) > 20 {
		diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
	}
	return strings.Join(diffs, "\n")
}

// WaitSameTree waits until the listing of sub (a path relative to the
// mount points, "" for the whole file system) is the same on every given
// node (default: every running node), and returns it with the time it
// took. Kernel caches and lagging followers make the first listings
// differ; after timeout the test fails with the difference.
func (c *Cluster) WaitSameTree(timeout time.Duration, sub string, nodes ...*Node) ([]Entry, time.Duration) {
	c.t.Helper()
	if len(nodes) == 0 {
		for _, n := range c.nodes {
			if n.Running() {
				nodes = append(nodes, n)
			}
		}
	}
	start := time.Now()
	var last string
	for {
		var first []Entry
		same := true
		for i, n := range nodes {
			l, err := ListTree(filepath.Join(n.mount, sub))
			if err != nil {
				same, last = false, fmt.Sprintf("%s: %v", n.id, err)
				break
			}
			if i == 0 {
				first = l
			} else if d := DiffTrees(first, l); d != "" {
				same, last = false, fmt.Sprintf("%s differs from %s:\n%s", n.id, nodes[0].id, d)
				break
			}
		}
		if same {
			return first, time.Since(start)
		}
		if time.Since(start) > timeout {
			c.t.Fatalf("clustertest: trees of %v not the same after %s: %s", nodes, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
