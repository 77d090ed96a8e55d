//! The InfluxDB sink: Butler SOS-compatible points for InfluxDB 1.x and 2.x/3.x.
//!
//! [`line`] encodes line protocol, [`schema`] builds Butler SOS's points, and
//! [`writer`] delivers them from the journal, confirming only what InfluxDB
//! accepted.

pub mod line;
pub mod schema;
pub mod writer;
