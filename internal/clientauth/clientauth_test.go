package clientauth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    map[string]string
		wantErr string
	}{
		{name: "one", text: "AK SK\n", want: map[string]string{"AK": "SK"}},
		{name: "comments and blanks", text: "# clients\n\n  a  b  \nc\td\n", want: map[string]string{"a": "b", "c": "d"}},
		{name: "empty", text: "# nothing\n", wantErr: "no credentials"},
		{name: "three fields", text: "a b c\n", wantErr: "line 1"},
		{name: "duplicate", text: "a b\na c\n", wantErr: "given twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.AccessKeys()) != len(tc.want) {
				t.Fatalf("keys %v, want %v", c.AccessKeys(), tc.want)
			}
			for k, v := range tc.want {
				if s, ok := c.Secret(k); !ok || s != v {
					t.Fatalf("Secret(%q) = %q, %v", k, s, ok)
				}
			}
			if _, ok := c.Secret("missing"); ok {
				t.Fatal("unknown key has a secret")
			}
		})
	}
}

func TestLoadFileRejectsReadableByOthers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "creds")
	if err := os.WriteFile(p, []byte("a b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("err = %v", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := c.Secret("a"); s != "b" {
		t.Fatalf("secret %q", s)
	}
}

func TestServerTLS(t *testing.T) {
	if c, err := ServerTLS("", ""); c != nil || err != nil {
		t.Fatalf("no files: %v, %v", c, err)
	}
	if _, err := ServerTLS("cert.pem", ""); err == nil {
		t.Fatal("a cert without a key was accepted")
	}
	if _, err := ServerTLS(filepath.Join(t.TempDir(), "c"), filepath.Join(t.TempDir(), "k")); err == nil {
		t.Fatal("missing files were accepted")
	}
}
