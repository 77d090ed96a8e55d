//! Where events go: InfluxDB (and, in later work, MQTT). Prometheus is served
//! from the metrics registry at `/metrics`.

pub mod influxdb;
