//! The exit codes of `dtss` and its services, in one place. A supervisor (`dtss up`,
//! systemd) restarts a service that exits with any code but `OK` and `USAGE`.

/// Stopped as asked (SIGINT, SIGTERM, SIGHUP) or finished.
pub const OK: i32 = 0;
/// An error, printed before exiting (a bad argument value, a part unreachable at start).
pub const FAILED: i32 = 1;
/// The command line was not understood (clap's own code): fix it, a restart will not help.
pub const USAGE: i32 = 2;
/// A worker could not go on (a settlement that retrying did not cure, a thread gone):
/// nothing of its current batch was committed; restarted, it resumes from MySQL.
pub const WORKER_FAILED: i32 = 3;
/// A worker process lost the connection to another process of its cluster: restart
/// every process of the cluster (timely cannot lose a peer and go on).
pub const PEER_LOST: i32 = 5;

/// The table printed under each subcommand's `--help`.
pub const HELP: &str = "Exit codes: 0 done or stopped by a signal; 1 error (printed); 2 bad \
command line; 3 a worker could not go on (restart it: it resumes from MySQL); 5 a worker \
lost a peer process (restart every process of the cluster).";
