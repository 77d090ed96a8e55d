//! The InfluxDB sink: Butler SOS-compatible points for InfluxDB 1.x and 2.x/3.x.
//!
//! So far: the line-protocol encoder ([`line`]) and the `user_events` point
//! ([`schema`]). The writer that reads the journal after its cursor, posts
//! gzip batches and confirms only what InfluxDB accepted comes next (issue 4).

pub mod line;
pub mod schema;
pub mod writer;
