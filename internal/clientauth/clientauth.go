// Package clientauth holds what the client-facing interfaces of a node (the
// S3 gateway and the KV server) share: the credentials clients authenticate
// with and the TLS configuration of their listeners.
//
// A credentials file has one client per line, "ACCESS_KEY SECRET" (fields
// separated by blanks); empty lines and lines starting with '#' are
// ignored. The S3 gateway checks AWS Signature V4 against the secret of the
// request's access key; the KV server accepts the same pair as an etcd user
// name and password.
package clientauth

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Credentials maps access keys to secrets. The zero value has none. It is
// immutable once loaded and safe for concurrent use.
type Credentials struct {
	secrets map[string]string
}

// LoadFile reads a credentials file. The file must not be readable by
// group or others, as it holds secrets.
func LoadFile(path string) (*Credentials, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("client credentials: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("client credentials %s: mode %v lets others read the secrets; chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("client credentials: %w", err)
	}
	c, err := Parse(string(b))
	if err != nil {
		return nil, fmt.Errorf("client credentials %s: %w", path, err)
	}
	return c, nil
}

// Parse parses the text of a credentials file.
func Parse(text string) (*Credentials, error) {
	c := &Credentials{secrets: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: want \"ACCESS_KEY SECRET\", got %d fields", n, len(f))
		}
		if _, dup := c.secrets[f[0]]; dup {
			return nil, fmt.Errorf("line %d: access key %q given twice", n, f[0])
		}
		c.secrets[f[0]] = f[1]
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c.secrets) == 0 {
		return nil, errors.New("no credentials (want lines \"ACCESS_KEY SECRET\")")
	}
	return c, nil
}

// New returns credentials holding one access key and secret.
func New(accessKey, secret string) *Credentials {
	return &Credentials{secrets: map[string]string{accessKey: secret}}
}

// Secret returns the secret of an access key.
func (c *Credentials) Secret(accessKey string) (string, bool) {
	if c == nil {
		return "", false
	}
	s, ok := c.secrets[accessKey]
	return s, ok
}

// AccessKeys returns the access keys, sorted.
func (c *Credentials) AccessKeys() []string {
	if c == nil {
		return nil
	}
	keys := make([]string, 0, len(c.secrets))
	for k := range c.secrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ServerTLS returns the TLS configuration of a client-facing listener from
// a PEM certificate (chain) and key file, or nil when both are empty
// (plain TCP).
func ServerTLS(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both a certificate file and a key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
