//! One module per workload.

pub mod alltoall;
pub mod etl;
pub mod flight;
pub mod objects;
pub mod tasks;
pub mod tpch;
