//! geosteer agent library: configuration, policy arithmetic, the edge that programs the kernel
//! maps, and the node diagnostics (admin socket, metrics, CLI commands). `main.rs` only parses
//! the command line and calls into here.

pub mod admin;
pub mod agent;
pub mod bpf_batch;
pub mod bpf_run;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod controller;
pub mod dataplane;
pub mod frontend;
pub mod kube;
pub mod links;
pub mod loader;
pub mod maglev;
pub mod mapped;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod outlier;
pub mod policy;
pub mod probe;
pub mod programmer;
pub mod state;
pub mod timeouts;
