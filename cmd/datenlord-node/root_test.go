package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestEveryCommandHasExamples(t *testing.T) {
	root := newRootCmd(streams{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}, LookupEnv: func(string) (string, bool) { return "", false }})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !strings.Contains(c.Example, "datenlord-node") {
			t.Errorf("%q has no Example with a real invocation", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func TestExecuteExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		wantCode   int
		wantStderr string
		wantUsage  bool
	}{
		{args: []string{"version"}, wantCode: 0},
		{args: []string{"--help"}, wantCode: 0},
		{args: []string{"serve", "--bogus"}, wantCode: 1, wantStderr: "Error: unknown flag: --bogus", wantUsage: true},
		{args: []string{"serve", "--page-size", "48KiB"}, wantCode: 1, wantStderr: "does not divide", wantUsage: true},
		{args: []string{"nope"}, wantCode: 1, wantStderr: "Run 'datenlord-node --help' for usage."},
		{args: []string{"version", "extra"}, wantCode: 1, wantStderr: "unknown command"},
	} {
		var stdout, stderr bytes.Buffer
		code := execute(tc.args, streams{Stdout: &stdout, Stderr: &stderr, LookupEnv: func(string) (string, bool) { return "", false }})
		if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantStderr) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.wantCode, tc.wantStderr)
		}
		if got := strings.Contains(stderr.String(), "Usage:"); got != tc.wantUsage {
			t.Errorf("%v: usage shown = %v, want %v:\n%s", tc.args, got, tc.wantUsage, stderr.String())
		}
	}
}
