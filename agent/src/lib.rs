//! geosteer agent library: configuration, policy arithmetic, and the edge that programs the
//! kernel maps. `main.rs` only parses the command line and calls into here.

pub mod agent;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod loader;
pub mod maglev;
pub mod outlier;
pub mod policy;
pub mod probe;
pub mod programmer;
