//! The node's configuration file, `config.toml` in the data directory.

use std::net::SocketAddr;
use std::path::Path;

use caisse_protocol::FederationId;
use serde::{Deserialize, Serialize};

/// Settings read at start-up. Policy (allocation, contributions) is not
/// here: it lives in the store and changes by parliament vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public name of the caisse.
    pub name: String,
    /// Its territory.
    pub territory: String,
    /// The federation it belongs to (bound into every signature).
    pub federation: FederationId,
    /// Address of the local HTTP API (port 0: any free port).
    pub api: SocketAddr,
    /// libp2p listen addresses.
    #[serde(default)]
    pub listen: Vec<String>,
    /// libp2p addresses of other caisses to connect to at start.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Public libp2p addresses of this node (behind a NAT or a port
    /// forward), signed in its federation document with the ones it
    /// listens on: other caisses dial only addresses a caisse signed.
    #[serde(default)]
    pub announce: Vec<String>,
    /// The HTTP server's bounds and the reverse proxy in front of it.
    #[serde(default)]
    pub http: Http,
    /// Settings for test networks only.
    #[serde(default)]
    pub testing: Testing,
}

/// `[http]`: bounds of the HTTP server, and the reverse proxy in front.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Connections open at once, all clients together.
    #[serde(default = "Http::default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client address.
    #[serde(default = "Http::default_max_per_address")]
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a request's headers (also the longest
    /// a kept-alive connection may sit idle).
    #[serde(default = "Http::default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Addresses of the reverse proxies in front of the node: from these
    /// only, the client's address is read from `X-Forwarded-For` (for the
    /// sign-in limiter); from any other address the header is ignored.
    /// Their connections count against `max_connections` only, not the
    /// per-address bound.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Mark the session cookie `Secure` (set it when a TLS proxy serves the
    /// console over https, as it should).
    #[serde(default)]
    pub secure_cookies: bool,
}

impl Http {
    fn default_max_connections() -> usize {
        1024
    }
    fn default_max_per_address() -> usize {
        256
    }
    fn default_header_timeout() -> u64 {
        10
    }

    /// The listener's limits.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.max_connections.max(1),
            max_per_address: self.max_connections_per_address.max(1),
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs.clamp(1, 300)),
            unbounded_addresses: self.trusted_proxies.clone(),
        }
    }
}

impl Default for Http {
    fn default() -> Http {
        Http {
            max_connections: Http::default_max_connections(),
            max_connections_per_address: Http::default_max_per_address(),
            header_timeout_secs: Http::default_header_timeout(),
            trusted_proxies: Vec::new(),
            secure_cookies: false,
        }
    }
}

/// Settings that only a test network should change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Testing {
    /// Let the admin API set the node's clock (to simulate months).
    #[serde(default)]
    pub manual_clock: bool,
    /// Storage faults to inject (tests of atomicity and fail-stop only).
    #[serde(default)]
    pub faults: Option<StoreFaults>,
}

/// Storage faults a test injects into a real node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFaults {
    /// Reads of keys under this prefix fail once, after `read_after` of
    /// them succeeded (e.g. `s/` fails a parliament draw part way).
    #[serde(default)]
    pub read_prefix: Option<String>,
    /// Successful reads under `read_prefix` before the one that fails.
    #[serde(default)]
    pub read_after: u32,
    /// Every batch applied after this many fails (the disk is gone).
    #[serde(default)]
    pub apply_after: Option<u32>,
    /// Syncs do nothing: what the node acknowledges may still sit in a
    /// volatile cache. Only for the power-cut harness's negative control,
    /// which must then find acknowledged purchases lost.
    #[serde(default)]
    pub skip_sync: bool,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path} is not a valid caisse config: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
}

impl Config {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The file as written by `caisse init`, with comments.
    pub fn to_commented_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| q(s)).collect();
            format!("[{}]", items.join(", "))
        };
        format!(
            "# Configuration of this caisse node. Read at start-up by `caisse node`.\n\
             # The caisse's policy (allocation, contributions, rollover) is not here:\n\
             # it is stored with the ledger and changed by the food parliament.\n\
             \n\
             # Public name and territory, published to the federation.\n\
             name = {}\n\
             territory = {}\n\
             \n\
             # The federation this caisse belongs to. Every signature is bound to it.\n\
             federation = {}\n\
             \n\
             # Local HTTP API and web console. Keep it on 127.0.0.1 unless a reverse\n\
             # proxy with TLS sits in front. Port 0 picks a free port (see node.json).\n\
             api = {}\n\
             \n\
             # libp2p addresses to listen on, and other caisses to dial at start.\n\
             listen = {}\n\
             bootstrap = {}\n\
             # Public addresses of this node, if others reach it through a NAT or\n\
             # a port forward (e.g. \"/dns4/caisse.example.org/tcp/7400\"): other\n\
             # caisses dial only the addresses a caisse signs, these and `listen`.\n\
             announce = {}\n\
             \n\
             [http]\n\
             # Connections at once, in all and from one address; seconds a client\n\
             # has to send its headers (and the longest idle keep-alive).\n\
             max_connections = {}\n\
             max_connections_per_address = {}\n\
             header_timeout_secs = {}\n\
             # The reverse proxies in front (their X-Forwarded-For is believed),\n\
             # e.g. [\"127.0.0.1\"] behind a local Caddy or nginx.\n\
             trusted_proxies = {}\n\
             # true when the console is served over https by the proxy.\n\
             secure_cookies = {}\n\
             \n\
             [testing]\n\
             # Only for test networks: let the admin API set the node's clock.\n\
             manual_clock = {}\n",
            q(&self.name),
            q(&self.territory),
            q(self.federation.as_str()),
            q(&self.api.to_string()),
            list(&self.listen),
            list(&self.bootstrap),
            list(&self.announce),
            self.http.max_connections,
            self.http.max_connections_per_address,
            self.http.header_timeout_secs,
            list(
                &self
                    .http
                    .trusted_proxies
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ),
            self.http.secure_cookies,
            self.testing.manual_clock
        ) + &self
            .testing
            .faults
            .as_ref()
            .and_then(|f| toml::to_string(f).ok())
            .map(|f| {
                format!("\n[testing.faults]\n# Storage faults injected on purpose: this node belongs to a test.\n{f}")
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_file_round_trips() {
        let c = Config {
            name: "Caisse \"commune\"".into(),
            territory: "Montpellier".into(),
            federation: FederationId::new("ssa").unwrap(),
            api: "127.0.0.1:0".parse().unwrap(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: vec![],
            announce: vec!["/dns4/caisse.example.org/tcp/7400".into()],
            http: Http::default(),
            testing: Testing::default(),
        };
        let text = c.to_commented_toml();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        // Faults given at init reach the file (they were dropped once).
        let mut faulty = c.clone();
        faulty.testing.faults = Some(StoreFaults {
            skip_sync: true,
            apply_after: Some(3),
            ..StoreFaults::default()
        });
        let text = faulty.to_commented_toml();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), faulty);
    }

    #[test]
    fn typos_are_reported_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "name = \"x\"\nterritory = \"y\"\nfederation = \"f\"\napi = \"127.0.0.1:0\"\napii = 3\n",
        )
        .unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("apii"), "{err}");
    }
}
