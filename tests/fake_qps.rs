//! Self-test of the in-process fake Qlik proxy service (tests/common/fake_qps.rs).
mod common;

use std::time::{Duration, Instant};

use common::fake_qps::{FakeQps, FakeSession, Mode};
use serde_json::Value;

const KEY: &str = "abcdefghIJKLMN01";

fn client(qps: &FakeQps, cert: &str, key: &str, timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = qps.cert_dir();
    let root = std::fs::read(dir.join("root.pem")).unwrap();
    let cert = std::fs::read(dir.join(cert)).unwrap();
    let key = std::fs::read(dir.join(key)).unwrap();
    assert!(
        key.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"),
        "the client key is PKCS#1 like a QMC export"
    );
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&root).unwrap()])
        .identity(reqwest::Identity::from_pem(&[cert, key].concat()).unwrap())
        .timeout(timeout)
        .build()
        .unwrap()
}

fn trusted(qps: &FakeQps) -> reqwest::Client {
    client(qps, "client.pem", "client_key.pem", Duration::from_secs(10))
}

fn url(qps: &FakeQps, path: &str) -> String {
    format!("https://localhost:{}{path}?Xrfkey={KEY}", qps.port())
}

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.header("X-Qlik-Xrfkey", KEY).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn lists_sessions_per_virtual_proxy() {
    let Some(qps) = FakeQps::start() else { return };
    qps.add_session("", "CORP", "alice", "Alice A", "s1");
    qps.add_session("", "CORP", "bob", "", "s2");
    qps.add_virtual_proxy("hdr");
    qps.add_session("hdr", "EXT", "carol", "Carol", "s3");
    let c = trusted(&qps);

    let (status, body) = send(c.get(url(&qps, "/qps/session"))).await;
    assert_eq!(status, 200, "{body}");
    let list = json(&body);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["UserDirectory"], "CORP");
    assert_eq!(list[0]["UserId"], "alice");
    assert_eq!(list[0]["UserName"], "Alice A");
    assert_eq!(list[0]["SessionId"], "s1");
    assert!(list[0]["Attributes"].is_array());
    assert!(list[1].get("UserName").is_none(), "empty name is left out");

    let (status, body) = send(c.get(url(&qps, "/qps/hdr/session"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)[0]["UserId"], "carol");

    let (status, _) = send(c.get(url(&qps, "/qps/nope/session"))).await;
    assert_eq!(status, 404);

    assert_eq!(
        qps.requests(),
        [
            ("GET", "/qps/session"),
            ("GET", "/qps/hdr/session"),
            ("GET", "/qps/nope/session")
        ]
        .map(|(m, p)| (m.to_string(), p.to_string(), KEY.to_string()))
    );
}

#[tokio::test]
async fn xrfkey_must_match() {
    let Some(qps) = FakeQps::start() else { return };
    let c = trusted(&qps);
    let base = format!("https://127.0.0.1:{}/qps/session", qps.port());
    let cases = [
        // (query key, header key)
        (Some(KEY), Some("abcdefghIJKLMN02")),
        (Some(KEY), None),
        (None, Some(KEY)),
        (Some("short"), Some("short")),
        (Some("abcdefgh-JKLMN01"), Some("abcdefgh-JKLMN01")),
    ];
    for (query, head) in cases {
        let mut req = match query {
            Some(k) => c.get(format!("{base}?Xrfkey={k}")),
            None => c.get(&base),
        };
        if let Some(h) = head {
            req = req.header("X-Qlik-Xrfkey", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{query:?} {head:?}");
        assert_eq!(resp.text().await.unwrap(), "Xrfkey mismatch");
    }
    // The same client over 127.0.0.1 with a matching key works.
    let resp = c
        .get(format!("{base}?Xrfkey={KEY}"))
        .header("X-Qlik-Xrfkey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(qps.requests().len(), cases.len() + 1);
    assert_eq!(qps.requests()[1].2, KEY);
    assert_eq!(qps.requests()[2].2, "");
}

#[tokio::test]
async fn deletes_by_session_and_by_user() {
    let Some(qps) = FakeQps::start() else { return };
    qps.add_virtual_proxy("hdr");
    qps.add_session("hdr", "CORP", "alice", "Alice", "s1");
    qps.add_session("hdr", "CORP", "Alice", "Alice", "s2");
    qps.add_session("hdr", "CORP", "bob", "Bob", "s3");
    qps.add_session("", "CORP", "alice", "Alice", "s4");
    let c = trusted(&qps);

    let (status, body) = send(c.delete(url(&qps, "/qps/hdr/session/s3"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["SessionId"], "s3");
    let (status, _) = send(c.delete(url(&qps, "/qps/hdr/session/s3"))).await;
    assert_eq!(status, 404);

    let (status, body) = send(c.delete(url(&qps, "/qps/hdr/user/corp/ALICE"))).await;
    assert_eq!(status, 200, "{body}");
    let removed: Vec<_> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["SessionId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(removed, ["s1", "s2"]);
    assert!(qps.sessions("hdr").is_empty());
    // Other virtual proxies keep theirs.
    assert_eq!(
        qps.sessions(""),
        [FakeSession {
            user_directory: "CORP".into(),
            user_id: "alice".into(),
            user_name: "Alice".into(),
            session_id: "s4".into(),
        }]
    );

    let (status, body) = send(c.delete(url(&qps, "/qps/user/CORP/nobody"))).await;
    assert_eq!((status, json(&body)), (200, Value::Array(vec![])));
    let (status, body) = send(c.delete(url(&qps, "/qps/session/s4"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(qps.sessions("").is_empty());
}

#[tokio::test]
async fn refuses_an_untrusted_client_certificate() {
    let Some(qps) = FakeQps::start() else { return };
    assert_eq!(qps.handshake_failures(), 0);
    let c = client(
        &qps,
        "other_client.pem",
        "other_client_key.pem",
        Duration::from_secs(10),
    );
    let err = c
        .get(url(&qps, "/qps/session"))
        .header("X-Qlik-Xrfkey", KEY)
        .send()
        .await
        .expect_err("an untrusted client certificate is refused");
    eprintln!("refused as expected: {err:?}");

    // No client certificate at all is refused too.
    let root = std::fs::read(qps.cert_dir().join("root.pem")).unwrap();
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&root).unwrap()])
        .build()
        .unwrap();
    anonymous
        .get(url(&qps, "/qps/session"))
        .header("X-Qlik-Xrfkey", KEY)
        .send()
        .await
        .expect_err("a missing client certificate is refused");

    let deadline = Instant::now() + common::DEADLINE;
    while qps.handshake_failures() < 2 {
        assert!(Instant::now() < deadline, "handshake failures not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(qps.handshake_failures(), 2);
    assert!(qps.requests().is_empty());

    // The server still serves trusted clients.
    let (status, _) = send(trusted(&qps).get(url(&qps, "/qps/session"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn modes() {
    let Some(qps) = FakeQps::start() else { return };
    let c = trusted(&qps);

    qps.set_mode(Mode::Forbidden);
    assert_eq!(
        send(c.get(url(&qps, "/qps/session"))).await,
        (403, "Forbidden".to_string())
    );

    qps.set_mode(Mode::Garbage);
    assert_eq!(
        send(c.get(url(&qps, "/qps/session"))).await,
        (200, "<html>not json</html>".to_string())
    );

    qps.set_mode(Mode::Normal);
    assert_eq!(
        send(c.get(url(&qps, "/qps/session"))).await,
        (200, "[]".to_string())
    );

    qps.set_mode(Mode::Hang);
    let impatient = client(&qps, "client.pem", "client_key.pem", Duration::from_secs(1));
    let started = Instant::now();
    let err = impatient
        .get(url(&qps, "/qps/session"))
        .header("X-Qlik-Xrfkey", KEY)
        .send()
        .await
        .expect_err("a hanging server times the client out");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Dropping the fake does not wait for the hanging request.
    let started = Instant::now();
    drop(qps);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        started.elapsed()
    );
}
