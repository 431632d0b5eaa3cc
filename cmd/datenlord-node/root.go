package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// streams are the process's outputs and environment, passed in so that
// commands can be run from tests without touching the real ones.
type streams struct {
	Stdout    io.Writer
	Stderr    io.Writer
	LookupEnv func(string) (string, bool)
}

// newRootCmd returns the root command with every subcommand attached.
func newRootCmd(s streams) *cobra.Command {
	root := &cobra.Command{
		Use:   "datenlord-node",
		Short: "A DatenLord node: a cache-first distributed storage system",
		Long: `datenlord-node runs one node of DatenLord, a cache-first distributed storage
system: a POSIX file system mounted through FUSE, with metadata in a Raft
service over Badger, immutable blocks persisted in a local directory or S3,
and reads served from memory, local NVMe, the neighbor node that owns the
page (RDMA or TCP) and then the store. Alone it is a complete system; with
--peers or --join it is one member of a cluster.

Every flag can also be set through the environment as DATENLORD_<FLAG>, with
dashes as underscores (--cache-mem is DATENLORD_CACHE_MEM); a flag on the
command line wins over the environment, which wins over the default.`,
		Example: `  # Mount the file system at /mnt/datenlord, keeping data in /var/lib/datenlord
  datenlord-node serve

  # Choose the data dir and mount point, with a 1 GiB memory cache
  datenlord-node serve --data-dir /srv/datenlord --mount /mnt/dl --cache-mem 1GiB

  # Print the version
  datenlord-node version`,
		Version: version,
		// execute prints errors once, and the usage only after a command
		// line mistake (a usageError), so run-time errors are not buried
		// under a screen of flags.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{cmd: c, err: err} })
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetOut(s.Stdout)
	root.SetErr(s.Stderr)
	root.AddCommand(newServeCmd(s), newClusterCmd(s), newCacheCmd(s), newBenchCmd(s), newVersionCmd())
	// Every command's help shows examples; cobra's shell completion
	// generator (five commands without any) is left out.
	root.CompletionOptions.DisableDefaultCmd = true
	root.InitDefaultHelpCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Example = `  # Help for the serve command (the same as: datenlord-node serve --help)
  datenlord-node help serve`
		}
	}
	return root
}

// execute runs the command line args and returns the process exit code:
// 0 on success, 1 on any error (printed on stderr).
func execute(args []string, s streams) int {
	root := newRootCmd(s)
	root.SetArgs(args)
	if cmd, err := root.ExecuteC(); err != nil {
		fmt.Fprintf(s.Stderr, "Error: %v\n", err)
		var ue *usageError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(s.Stderr, "\n%s", ue.cmd.UsageString())
		case strings.HasPrefix(err.Error(), "unknown command"):
			fmt.Fprintf(s.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		return 1
	}
	return 0
}

// usageError is a mistake on the command line (an unknown flag, a value
// that does not parse, flags that contradict each other): execute prints
// the command's usage after it.
type usageError struct {
	cmd *cobra.Command
	err error
}

// Error returns the underlying error text.
func (e *usageError) Error() string { return e.err.Error() }

// Unwrap returns the underlying error.
func (e *usageError) Unwrap() error { return e.err }
