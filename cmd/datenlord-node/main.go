// Command datenlord-node runs one node of DatenLord: `datenlord-node serve`
// mounts the file system and serves it until SIGINT or SIGTERM;
// `datenlord-node version` prints the build. See `datenlord-node --help`.
//
// The command wires the packages together and owns the process: flags and
// environment, logging, the data dir lock, metrics, signals and shutdown
// order. It holds no file system logic of its own.
package main

import "os"

func main() {
	os.Exit(execute(os.Args[1:], streams{Stdout: os.Stdout, Stderr: os.Stderr, LookupEnv: os.LookupEnv}))
}
