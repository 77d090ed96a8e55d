//! The HTTP server loop, with the limits `axum::serve` cannot set.
//!
//! whosin's port may be reachable from a whole network (to let Prometheus
//! scrape it), so a careless or hostile client must not be able to hold it:
//! every connection takes a permit (`http.max_connections`; more are answered
//! 503 and closed at once, so a scraper sees a clear error instead of a hang),
//! a request head must arrive within `http.header_timeout` and fit in
//! `http.max_header_bytes` (431 otherwise), and an idle keep-alive connection
//! is closed after the same timeout. Request bodies and answer times are
//! limited in [`super::router`] by tower-http layers.
//!
//! With `http.tls`, every connection is TLS (there is no plain port beside
//! it): the handshake must also finish within `http.header_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection-level limits (`http.*`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to send a request head, and the longest idle keep-alive.
    pub header_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
}

impl Limits {
    /// The limits configured in `http`.
    pub fn from_config(c: &crate::config::HttpConfig) -> Self {
        Self {
            max_connections: c.max_connections,
            header_timeout: c.header_timeout.get(),
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// The body of the answer to a connection over the limit.
const BUSY: &str = "too many connections to whosin (http.max_connections)\n";

/// How long a refused client gets to take its 503.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often at most a refused connection is logged.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` is cancelled; then stops accepting,
/// lets requests in progress finish and returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<super::tls::Acceptor>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut refusals = crate::ratelog::RateLog::new(REFUSED_LOG_EVERY);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(more) = refusals.due() {
                tracing::warn!(
                    "HTTP connection from {peer} refused: {} connections are open \
                     (http.max_connections){}",
                    limits.max_connections,
                    crate::ratelog::more(more)
                );
            }
            let tls = tls.as_ref().map(super::tls::Acceptor::get);
            tracker.spawn(async move {
                match tls {
                    None => refuse(stream).await,
                    Some(acceptor) => {
                        if let Ok(Ok(s)) =
                            tokio::time::timeout(BUSY_WRITE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            refuse(s).await;
                        }
                    }
                }
            });
            continue;
        };
        let app = app.clone();
        let limits = limits.clone();
        let stop = stop.clone();
        let tls = tls.as_ref().map(super::tls::Acceptor::get);
        tracker.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app, &limits, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        () = stop.cancelled() => return,
                        h = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)) => h,
                    };
                    match handshake {
                        Ok(Ok(s)) => serve_connection(s, peer, app, &limits, stop).await,
                        // A plain-HTTP client or a browser that does not trust
                        // the certificate ends here; it is theirs to fix.
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers 503 without reading the request, then closes.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    stop: CancellationToken,
) {
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        // The read buffer only ever needs to hold a head (bodies are tiny and
        // refused early), so it is capped near the head limit.
        .max_buf_size(limits.max_header_bytes.max(8 * 1024) + 8 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("HTTP connection from {peer} ended: {e}");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!("HTTP connection from {peer} ended: {e}");
    }
}
