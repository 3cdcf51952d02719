//! One module per workload.

pub mod etl;
pub mod flight;
pub mod objects;
