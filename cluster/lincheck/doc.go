// Package lincheck checks that the metadata operations clients make on
// datenlord-node mounts are linearizable, with porcupine.
//
// # Model
//
// The key space is a few file names (see Name) in a few directories; the
// model state of a directory is, for every name, whether a file of that
// name exists and, if so, its permission bits and size. The operations are
// those of a POSIX client on the mount:
//
//   - create: open(O_CREAT|O_EXCL|O_WRONLY, mode) + close. Success creates an
//     empty file with mode &^ umask; EEXIST if the name exists.
//   - unlink: success removes the name; ENOENT if it does not exist.
//   - rename(from, to) within one directory, with RENAME_NOREPLACE: ENOENT
//     if from does not exist, EEXIST if to exists (rename(x, x) too);
//     otherwise to takes from's file and from is gone. (A plain rename can
//     succeed in the kernel without reaching the file system when its
//     dentries for from and to briefly name the same inode during another
//     node's rename — see history.go — which no atomic model can place.)
//   - chmod and truncate (the two setattrs): ENOENT if the name does not
//     exist, otherwise they set the permission bits or the size.
//   - stat: ENOENT, or the file's permission bits and size.
//
// Operations never cross directories, so the model partitions the history
// by directory and porcupine checks each directory on its own.
//
// # Unknown outcomes
//
// A client records each operation with the wall-clock time it was called
// and returned (all clients run in the test process, so they share one
// clock). The outcome rules:
//
//   - A mutation that returns success, ENOENT or EEXIST has a definite
//     outcome and is recorded as it returned.
//   - A mutation that fails with any other error (EIO, ETIMEDOUT, ENOTCONN,
//     EINTR, ... as a node is killed or partitioned away), or that does not
//     return within the client's operation timeout, may or may not have
//     taken effect. Following porcupine's convention it is recorded with an
//     unknown output and a return time of infinity (math.MaxInt64): the
//     checker may linearize it at any point after its call, including after
//     every other operation, which is the same as never applying it. The
//     model applies such an operation as it would succeed or fail in the
//     state at hand and accepts it.
//   - A stat that fails with anything but ENOENT observed nothing and
//     changed nothing; it is left out of the history.
//
// A client whose operation timed out abandons it (the system call may
// still be hanging on a partitioned mount) and continues under a new
// client id, so that one client's operations never overlap.
//
// # Proving the checker can fail
//
// InjectStaleRead adds to a real history a stat that returns ENOENT for a
// file right after a create of it returned success, with no operation that
// could have removed it in between: the stale read of a follower that
// served a lookup from its own out-of-date state. The check must then
// report a violation.
package lincheck
