//! One module per workload.

pub mod actors;
pub mod alltoall;
pub mod etl;
pub mod filters;
pub mod flight;
pub mod hosts;
pub mod objects;
pub mod operate;
pub mod recovery;
pub mod sim;
pub mod tasks;
pub mod tpch;
