//! RocksDB's flushes and compactions on a cluster's node run at the lowest CPU priority.
//!
//! A cluster's three nodes apply the same entries, so their memtables fill, and flush, at the
//! same moment. On a small machine the three flushes take the cores from the threads that
//! append to the Raft log and answer requests, and every send in flight waits. A background
//! thread at nice 19 only gets the CPU the requests leave over; when requests take all of it
//! for long, RocksDB's write stall (too many memtables waiting to be flushed) hands it back.
//! In the 3-node benchmark at half the maximum rate on 2 cores this took the p99 of sends from
//! 31–78 ms to 18–24 ms. A standalone server does not do this: it has no flushes of other nodes
//! to compete with, and in a comparison run with it its maximum rate fell from 68,000–75,000 to
//! 63,000 msgs/s, the write stall costing more than the flushes. The I/O priority is left
//! alone: an idle-class flush can be starved behind the log's steady writes, and a flush that
//! does not finish stops the engine's writes.

use rocksdb::{Env, Options};

/// Runs the background threads of the database opened with `options` at the lowest CPU
/// priority. The threads belong to RocksDB's default environment, which every database of the
/// process shares, so this holds for all of them.
pub fn behind_requests(options: &mut Options) -> Result<(), rocksdb::Error> {
    let mut env = Env::new()?;
    env.lower_thread_pool_cpu_priority();
    env.lower_high_priority_thread_pool_cpu_priority();
    options.set_env(&env);
    Ok(())
}
