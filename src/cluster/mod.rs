//! The cluster commands' shared machinery: the coordinator's async driver
//! ([`driver`]) and the multi-host `glom coordinator` / `glom worker`
//! commands ([`node`]). `glom train` (`crate::train`) runs the same driver
//! and workers in one process.

pub(crate) mod driver;
pub(crate) mod node;
