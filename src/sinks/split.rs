//! Finding the points a server refuses for good, so that one bad point
//! cannot stop a sink: a refused request is split in halves until the refused
//! points stand alone; those are logged with the server's reason and skipped.

use std::future::Future;

use super::{Refused, SinkError};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// Trying the same request later can work (network, 5xx, 429, a
    /// credential or database the administrator can fix).
    Retry(String),
    /// The server will never take this request as it is (400, 413, 422).
    Refused(String),
}

/// One request of encoded points (line-protocol lines, JSON events).
pub trait Post: Sync {
    /// What the log calls the destination (`influxdb`, `new_relic:1234567`).
    fn destination(&self) -> &str;
    /// Sends `points` in one request.
    fn post(&self, points: &[String]) -> impl Future<Output = Result<(), PostError>> + Send;
}

/// Sends `points`, splitting refused requests; returns what was refused, or
/// the error to retry the whole batch on (the parts already written are
/// written again then: every sink's points are idempotent or carry `seq`).
pub async fn deliver_split<P: Post>(
    p: &P,
    points: &[String],
) -> Result<Option<Refused>, SinkError> {
    let mut refused: Option<Refused> = None;
    let mut todo = vec![(0, points.len())];
    while let Some((from, to)) = todo.pop() {
        if from == to {
            continue;
        }
        match p.post(&points[from..to]).await {
            Ok(()) => {}
            Err(PostError::Retry(msg)) => return Err(SinkError(msg)),
            Err(PostError::Refused(msg)) if to - from == 1 => {
                let point = points[from].trim_end();
                let shown: String = point.chars().take(400).collect();
                tracing::error!(
                    "{} refused a point for good, skipping it: {msg}: {shown}",
                    p.destination()
                );
                refused = Refused::merge(
                    refused,
                    Some(Refused {
                        points: 1,
                        reason: msg,
                    }),
                );
            }
            Err(PostError::Refused(_)) => {
                let mid = from + (to - from) / 2;
                todo.push((mid, to));
                todo.push((from, mid));
            }
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Refuses any request holding a point that contains "bad".
    struct Picky(Mutex<Vec<String>>);

    impl Post for Picky {
        fn destination(&self) -> &str {
            "picky"
        }
        async fn post(&self, points: &[String]) -> Result<(), PostError> {
            if points.iter().any(|p| p.contains("bad")) {
                return Err(PostError::Refused("no".into()));
            }
            self.0.lock().unwrap().extend(points.iter().cloned());
            Ok(())
        }
    }

    #[tokio::test]
    async fn only_the_refused_points_are_skipped() {
        let points: Vec<String> = (0..37)
            .map(|i| {
                if i % 10 == 3 {
                    format!("bad{i}")
                } else {
                    format!("ok{i}")
                }
            })
            .collect();
        let p = Picky(Mutex::default());
        let r = deliver_split(&p, &points).await.unwrap().unwrap();
        assert_eq!(r.points, 4);
        let written = p.0.lock().unwrap().clone();
        assert_eq!(written.len(), 33);
        assert!(written.iter().all(|w| w.starts_with("ok")));
        let mut sorted = written.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 33, "each good point written once");
    }
}
