//! whosin: who is logged in to Qlik Sense, live and after the fact.
//!
//! Data flows one way: UDP socket → parser ([`ingest`]) → blacklist and live
//! state ([`sessions`]) → metrics ([`metrics`], served by [`http`]). The binary
//! (`src/main.rs`) only parses the command line and calls into this library.

pub mod apps;
pub mod blacklist;
pub mod change;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod event;
pub mod http;
pub mod import;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod problems;
pub mod qlik;
pub mod queries;
pub mod ratelog;
pub mod sessions;
pub mod simulate;
pub mod sinks;
pub mod storage;
pub mod who;
