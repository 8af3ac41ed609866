//! The HTTP listener: hyper's HTTP/1 server with the bounds a node facing
//! the internet needs, around the router of [`crate::server`].
//!
//! - at most [`HttpLimits::max_connections`] connections at once, and at
//!   most [`HttpLimits::max_per_address`] from one client address (a
//!   connection beyond either is closed at once, so idle sockets cannot
//!   take every file descriptor and shut the tills out);
//! - a header read timeout that is also the keep-alive idle timeout (hyper
//!   starts it again after each response): a client that connects and
//!   says nothing, or sends its headers a byte at a time, is dropped;
//! - a timeout on each request's handling (in [`crate::server`]);
//! - the process's open-file limit raised to its hard limit at start.
//!
//! axum's `serve` has none of the connection bounds, so the accept loop is
//! here, over `hyper` and `hyper-util` (the crates axum itself runs on).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Connection bounds (from `[http]` in config.toml).
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_address: usize,
    /// Time a client has to send a request's headers, and the longest a
    /// kept-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Addresses held to the total bound only (the trusted reverse
    /// proxies, through which every client comes).
    pub unbounded_addresses: Vec<IpAddr>,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            max_per_address: 256,
            header_timeout: Duration::from_secs(10),
            unbounded_addresses: Vec::new(),
        }
    }
}

/// Connections held, in all and per address.
#[derive(Default)]
struct Held {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    refused: u64,
}

/// Releases a connection's place when the connection ends.
struct Place {
    held: Arc<Mutex<Held>>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.by_address.remove(&self.ip);
            }
        }
    }
}

/// Raise the soft limit on open files to the hard limit (a node holds a
/// socket per client and per peer, and sled's files); returns the limit
/// now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max.min(1 << 20),
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    r.rlim_cur
}

impl HttpLimits {
    /// These limits within `open_files` descriptors: HTTP connections may
    /// take three quarters, less a reserve for the store and the peers.
    pub fn within(mut self, open_files: u64) -> HttpLimits {
        let room = usize::try_from((open_files / 4 * 3).saturating_sub(128))
            .unwrap_or(usize::MAX)
            .max(16);
        if self.max_connections > room {
            tracing::warn!(
                open_files,
                max_connections = room,
                "the open-file limit is low: fewer HTTP connections are allowed than configured"
            );
            self.max_connections = room;
        }
        self.max_per_address = self.max_per_address.min(self.max_connections);
        self
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serve `router` on `listener` within `limits` until `stop` turns true;
/// then stop accepting, let open requests finish (up to 10 s) and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let held = Arc::new(Mutex::new(Held::default()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let (done_tx, mut done_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let place = {
            let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
            let here = h.by_address.get(&peer.ip()).copied().unwrap_or(0);
            let per_address_full =
                here >= limits.max_per_address && !limits.unbounded_addresses.contains(&peer.ip());
            if h.total >= limits.max_connections || per_address_full {
                h.refused += 1;
                // One line per 1,000 refusals: a flood must not flood the log.
                if h.refused % 1000 == 1 {
                    tracing::warn!(target: "caisse::security", client = %peer.ip(), open = h.total, from_client = here, refused = h.refused, "HTTP connection refused: connection limit reached");
                }
                drop(stream);
                continue;
            }
            h.total += 1;
            *h.by_address.entry(peer.ip()).or_default() += 1;
            Place {
                held: held.clone(),
                ip: peer.ip(),
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            },
        );
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        let mut stop_conn = stop.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _place = place;
            let _done = done;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop_conn) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
    // Every connection task holds a sender: wait for them to end.
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(12), async {
        while done_rx.changed().await.is_ok() {}
    })
    .await;
}
