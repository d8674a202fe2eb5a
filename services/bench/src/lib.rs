//! The benchmark's parts: workloads, drivers, the runner and its statistics, reports.

pub mod chart;
pub mod driver;
pub mod noisy;
pub mod runner;
pub mod stats;
pub mod table;
pub mod workload;
