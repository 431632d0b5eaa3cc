package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// Set at link time by the Makefile:
//
//	go build -ldflags "-X main.version=v0.1.0 -X main.commit=abc1234"
//
// They are the only package-level variables, and nothing writes them at
// run time.
var (
	version = "dev"
	commit  = "dev"
)

// buildInfo describes this binary.
type buildInfo struct {
	Version   string
	Commit    string
	GoVersion string
	Platform  string
}

// currentBuild returns the build information linked into the binary.
func currentBuild() buildInfo {
	return buildInfo{
		Version:   version,
		Commit:    commit,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
}

// String renders the build information as `version` prints it.
func (b buildInfo) String() string {
	return fmt.Sprintf("datenlord-node %s\n  git commit: %s\n  go version: %s\n  platform:   %s\n", b.Version, b.Commit, b.GoVersion, b.Platform)
}

// newVersionCmd returns the `version` command.
func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, git commit and Go version of this binary",
		Example: `  # Print the build information
  datenlord-node version

  # The same, as the root command's flag
  datenlord-node --version`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), currentBuild())
			return err
		},
	}
}
