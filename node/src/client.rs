//! A client of a node's HTTP API, used by the `caisse` CLI and the testnet.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::daemon::NodeInfo;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach the caisse node at {url}: {detail}. Is `caisse node` running?")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// The node answered with an error.
    #[error("{message} ({code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// What went wrong and what to do.
        message: String,
        /// Extra detail (a decline reason), if any.
        detail: Option<serde_json::Value>,
    },
    /// The answer did not decode.
    #[error("unexpected answer from the node: {0}")]
    Decode(String),
    /// The client could not be set up (node.json or token file).
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The API error code, if the node answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client bound to one node and one token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Which token file of a data directory to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFile {
    /// `admin.token`.
    Admin,
    /// `observer.token`.
    Observer,
}

/// A kept-alive connection idle this long is not reused: the node closes
/// one idle for `[http] header_timeout` (10 s by default), and a request
/// sent on a connection at the moment the node closes it fails with
/// "connection reset by peer" (seen once, in the 48-caisse testnet's
/// settlement loop, which comes back to each node after a pause).
pub const POOL_IDLE: Duration = Duration::from_secs(5);

fn http_client(idle: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .unwrap_or_default()
}

impl Client {
    /// A client of the API at `api` using `token`.
    pub fn new(api: SocketAddr, token: impl Into<String>) -> Client {
        Client::with_base(format!("http://{api}"), token)
    }

    /// A client of the API at a base URL (`http://127.0.0.1:7300`).
    pub fn with_base(base: impl Into<String>, token: impl Into<String>) -> Client {
        let http = http_client(64);
        Client {
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into().trim().to_owned(),
            http,
        }
    }

    /// The same client keeping up to `idle` connections open between
    /// requests (a load generator with that many requests in flight; the
    /// default keeps 64).
    pub fn with_idle_connections(mut self, idle: usize) -> Client {
        self.http = http_client(idle);
        self
    }

    /// A client of the node running on data directory `dir`.
    pub fn from_data_dir(dir: &Path, which: TokenFile) -> Result<Client, ClientError> {
        let info = NodeInfo::read(dir).map_err(|e| ClientError::Setup(e.to_string()))?;
        let file = match which {
            TokenFile::Admin => &info.admin_token_file,
            TokenFile::Observer => &info.observer_token_file,
        };
        // A node.json written by an older node may name the token file
        // relative to that node's working directory: it is in `dir`.
        let in_dir = file.file_name().map(|n| dir.join(n));
        let file = match in_dir {
            Some(f) if file.is_relative() => f,
            _ => file.clone(),
        };
        let file = &file;
        let token = std::fs::read_to_string(file)
            .map_err(|e| ClientError::Setup(format!("cannot read {}: {e}", file.display())))?;
        Ok(Client::new(info.api, token))
    }

    /// The bearer token this client sends (for a load generator that
    /// speaks HTTP itself).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same node with another token.
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            base: self.base.clone(),
            token: token.into().trim().to_owned(),
            http: self.http.clone(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            // The causes too: "connection refused" and "reset by peer"
            // call for different remedies.
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                source = s.source();
            }
            ClientError::Unreachable {
                url: url.to_owned(),
                detail,
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
        } else {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            Err(ClientError::Api {
                status: status.as_u16(),
                code: v["error"].as_str().unwrap_or("http_error").to_owned(),
                message: v["message"]
                    .as_str()
                    .map_or_else(|| format!("HTTP {status}"), str::to_owned),
                detail: v.get("detail").cloned(),
            })
        }
    }

    /// GET `path` (e.g. `/api/v1/status`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// POST `body` as JSON to `path`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }
}

#[cfg(test)]
mod pool_tests {
    /// The client gives up an idle connection before a node with the
    /// default limits closes it.
    #[test]
    fn idle_connections_are_dropped_before_the_node_closes_them() {
        assert!(super::POOL_IDLE < crate::http::HttpLimits::default().header_timeout);
    }
}
