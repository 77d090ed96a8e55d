//! A real Mosquitto (Debian's `mosquitto`) for the tests, with persistence in
//! its own folder on a free loopback port, and a QoS 1 subscriber.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use super::{DEADLINE, free_port};

/// A real mosquitto with persistence in its own folder, killed when dropped.
pub struct Mosquitto {
    bin: PathBuf,
    child: Option<Child>,
    pub config: PathBuf,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Option<Mosquitto> {
        let bin = super::tool("mosquitto", "mosquitto")?;
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        // max_queued_messages 0: a persistent subscriber that is offline for a
        // moment must not lose messages to the broker's own queue limit.
        // `user root`: started as root, mosquitto would otherwise switch to the
        // mosquitto user, which cannot write its persistence file here.
        std::fs::write(
            &config,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nlog_dest none\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            bin,
            child: None,
            config,
            port,
        };
        m.run();
        Some(m)
    }

    pub fn run(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let until = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, so that mosquitto saves its persistent sessions, then waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// A QoS 1 subscriber to `qliksense/#`. With `persistent`, its session
/// (subscription and queued messages) outlives its connection and a broker
/// restart, so it sees every message published while it was away.
pub struct Subscriber {
    got: Arc<Mutex<Vec<Message>>>,
    client: Client,
}

impl Subscriber {
    pub fn connect(port: u16, id: &str, persistent: bool) -> Subscriber {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(16 << 20, 1 << 20);
        let (client, mut connection) = Client::new(o, 100);
        client.subscribe("qliksense/#", QoS::AtLeastOnce).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let sink = got.clone();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    // The broker is down: rumqttc reconnects on the next poll.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        subscribed
            .recv_timeout(DEADLINE)
            .expect("the subscription is acknowledged");
        Subscriber { got, client }
    }

    pub fn messages(&self) -> Vec<Message> {
        self.got.lock().unwrap().clone()
    }

    /// Polls until `done` holds for the messages so far.
    pub fn wait(&self, what: &str, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
        let until = Instant::now() + DEADLINE * 3;
        loop {
            let m = self.messages();
            if done(&m) {
                return m;
            }
            assert!(
                Instant::now() < until,
                "{what}: not after {:?}; got {} messages, the last: {:?}",
                DEADLINE * 3,
                m.len(),
                m.last()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}
