package mountinfo

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	table := `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
40 36 0:51 / /tmp/with\040space rw,nosuid - fuse.datenlord datenlord rw,user_id=0
41 36 0:52 / /tmp/with\040space rw - tmpfs tmpfs rw
short line
`
	mounts, err := parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{{"/mnt2", "ext3"}, {"/tmp/with space", "fuse.datenlord"}, {"/tmp/with space", "tmpfs"}}
	if len(mounts) != len(want) {
		t.Fatalf("got %v, want %v", mounts, want)
	}
	for i := range want {
		if mounts[i] != want[i] {
			t.Errorf("mount %d = %+v, want %+v", i, mounts[i], want[i])
		}
	}
}

func TestUnescape(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`/plain`, `/plain`},
		{`/a\040b`, `/a b`},
		{`/tab\011x`, "/tab\tx"},
		{`/back\134slash`, `/back\slash`},
		{`/trailing\04`, `/trailing\04`},
		{`/bad\09x`, `/bad\09x`},
	} {
		if got := Unescape(c.in); got != c.want {
			t.Errorf("Unescape(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestLookupRoot(t *testing.T) {
	found, fstype, err := Lookup("/")
	if err != nil {
		t.Fatal(err)
	}
	if !found || fstype == "" {
		t.Errorf("Lookup(/) = %v, %q; the root is always a mount point", found, fstype)
	}
}
