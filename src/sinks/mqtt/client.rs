//! The rumqttc client options from `sinks.mqtt`: address, credentials, TLS.

use std::sync::Arc;

use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

use super::MqttConfig;

pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The client options from the config; errors name the key at fault.
pub fn options(c: &MqttConfig) -> Result<MqttOptions, String> {
    let url = reqwest::Url::parse(&c.url)
        .map_err(|e| format!("sinks.mqtt.url: {:?} is not a URL ({e})", c.url))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => {
            return Err(format!(
                "sinks.mqtt.url: {other}:// is not mqtt:// or mqtts://"
            ));
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| format!("sinks.mqtt.url: {:?} names no host", c.url))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut o = MqttOptions::new(&c.client_id, host, port);
    o.set_keep_alive(c.keepalive.get())
        // whosin resends from its journal; a broker-side session for the
        // publisher would only add a second, uncoordinated resend.
        .set_clean_session(true)
        // The state topic of a big site carries thousands of user names.
        .set_max_packet_size(1 << 20, 256 << 20)
        // Acknowledgements come back in microseconds on a LAN, but 100 messages
        // in flight (the default) still made the broker wait for the sink.
        .set_inflight(1000);
    if let Some(user) = &c.username {
        o.set_credentials(user, c.password.clone().unwrap_or_default());
    }
    if tls {
        let config = tls_config(c)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(o)
}

fn tls_config(c: &MqttConfig) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("sinks.mqtt: TLS: {e}"))?;
    let certs =
        |key: &str, path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sinks.mqtt.{key}: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "sinks.mqtt.{key}: {} holds no PEM certificate",
                    path.display()
                ));
            }
            Ok(certs)
        };
    let builder = match &c.ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs("ca_file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sinks.mqtt.ca_file: {}: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("sinks.mqtt: the system's trust store: {e}"))?
        }
    };
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs("client_cert", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!("sinks.mqtt.client_key: cannot read {}: {e}", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("sinks.mqtt.client_cert: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_url() {
        let mut c = MqttConfig {
            url: "mqtt://[::1]".into(),
            ..Default::default()
        };
        assert_eq!(options(&c).unwrap().broker_address(), ("::1".into(), 1883));
        c.url = "mqtt://broker.example.com:2883".into();
        assert_eq!(
            options(&c).unwrap().broker_address(),
            ("broker.example.com".into(), 2883)
        );
        c.url = "mqtts://broker.example.com".into();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let e = options(&c).unwrap_err();
        assert!(
            e.starts_with("sinks.mqtt.ca_file: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
