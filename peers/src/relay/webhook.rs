//! Lifecycle events POSTed to a webhook (spec §13.5), so a contact centre can show
//! "co-browse connected / ended" next to a conversation.
//!
//! One task posts the events in order, each as one JSON object (the same object the event log
//! writes as a line) in an HTTP/1.1 `POST` with `Content-Type: application/json`, on a new
//! connection per event. The queue in front of it is bounded ([`QUEUE`] events): when the
//! webhook is slower than the relay, the newest events are dropped and counted rather than
//! held, and a webhook that fails or answers other than 2xx is logged and skipped after one
//! retry. Plain `http://` URLs are supported; put a local forwarder in front of an `https://`
//! endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Events waiting to be posted at most; more are dropped.
pub const QUEUE: usize = 1024;

/// How long one `POST` may take, connection included.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from the webhook (only its status line matters).
const MAX_ANSWER: usize = 16 * 1024;

/// A webhook URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not an `http://host[:port][/path]` URL.
    #[error("{0:?}: expected http://host[:port][/path] (put a local forwarder in front of https)")]
    BadUrl(String),
}

/// Where events are posted: host, port and path of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 when the URL gives none).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl std::str::FromStr for WebhookUrl {
    type Err = WebhookError;

    fn from_str(url: &str) -> Result<Self, WebhookError> {
        let bad = || WebhookError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(['\r', '\n', ' ']) {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), 80),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(WebhookUrl {
            host,
            port,
            path: path.to_owned(),
        })
    }
}

impl WebhookUrl {
    /// The `Host` header's value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The posting task's handle: queue events with [`Webhook::post`].
#[derive(Debug, Clone)]
pub struct Webhook {
    tx: mpsc::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Webhook {
    /// Starts the task that posts to `url` on the current tokio runtime.
    pub fn spawn(url: WebhookUrl) -> Webhook {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                let mut last = String::new();
                for _attempt in 0..2 {
                    match timeout(POST_TIMEOUT, post(&url, &body)).await {
                        Ok(Ok(())) => {
                            last.clear();
                            break;
                        }
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = "timed out".to_owned(),
                    }
                }
                if !last.is_empty() {
                    tracing::warn!(host = %url.host, error = %last, "webhook POST failed; event skipped");
                }
            }
        });
        Webhook {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues one event (a JSON object) to be posted; drops it when the queue is full.
    pub fn post(&self, json: Vec<u8>) {
        if self.tx.try_send(json).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Posts `body` to `url` on a new connection and checks for a 2xx answer.
async fn post(url: &WebhookUrl, body: &[u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tandem-relay/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < MAX_ANSWER {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(std::io::Error::other(format!("answered {code}"))),
        None => Err(std::io::Error::other("no HTTP status line")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u: WebhookUrl = "http://cc.example:8080/hooks/cobrowse?x=1".parse().unwrap();
        assert_eq!(
            u,
            WebhookUrl {
                host: "cc.example".into(),
                port: 8080,
                path: "/hooks/cobrowse?x=1".into()
            }
        );
        assert_eq!(u.host_header(), "cc.example:8080");
        let u: WebhookUrl = "http://127.0.0.1".parse().unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.host_header().as_str()),
            (80, "/", "127.0.0.1")
        );
        let u: WebhookUrl = "http://[::1]:9/e".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.host_header().as_str()),
            ("::1", 9, "[::1]:9")
        );
        for bad in [
            "https://cc.example/",
            "cc.example",
            "http://",
            "http://:80/",
            "http://user@cc.example/",
            "http://cc.example:x/",
            "http://cc.example/a b",
            "http://[::1/",
        ] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }
}
