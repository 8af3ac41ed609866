//! Helpers to run the real `caisse` binary on temporary data directories.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `caisse` binary built by cargo for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_caisse"))
}

/// Run `caisse --data-dir DIR ARGS…` and return its output.
pub fn caisse(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run caisse")
}

/// Run with `--json` and parse stdout; panics with stderr if it fails to parse.
pub fn json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = caisse(dir, &all);
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "caisse {args:?} gave no JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// Run with `--json`, require success, return the JSON.
pub fn ok(dir: &Path, args: &[&str]) -> Value {
    let (code, v) = json(dir, args);
    assert_eq!(code, 0, "caisse {args:?} failed: {v}");
    v
}

/// A node process on a temporary data directory, killed on drop.
pub struct TestNode {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub api: String,
}

impl TestNode {
    /// `caisse init` a new caisse in `dir` (API on a free port).
    pub fn init(dir: &Path, name: &str, extra: &[&str]) {
        let mut args = vec![
            "init",
            "--name",
            name,
            "--territory",
            "Testville",
            "--api",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let out = caisse(dir, &args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start `caisse node` on `dir` and wait until it has written node.json.
    // The child moves into the TestNode, whose Drop kills and waits for it.
    #[allow(clippy::zombie_processes)]
    pub fn start(dir: &Path) -> TestNode {
        TestNode::start_with(dir, |_| {})
    }

    /// [`TestNode::start`], with a change to the command first (limits,
    /// environment).
    #[allow(clippy::zombie_processes)]
    pub fn start_with(dir: &Path, change: impl FnOnce(&mut Command)) -> TestNode {
        let _ = std::fs::remove_file(dir.join("node.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("node")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        change(&mut cmd);
        let mut child = cmd.spawn().expect("spawn caisse node");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = std::fs::read_to_string(dir.join("node.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok());
            if let Some(v) = info {
                return TestNode {
                    dir: dir.to_owned(),
                    child: Some(child),
                    api: v["api"].as_str().unwrap_or_default().to_owned(),
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node did not start within 30 s; log:\n{}",
                    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the node, as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<i32> {
        let c = self.child.take()?;
        let pid = c.id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let mut c = c;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait up to `secs` for the node to exit by itself; its exit code
    /// (None if it is still running, or was killed by a signal).
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The admin token.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small deterministic random generator (SplitMix64), seeded per test so a
/// failing run can be replayed with the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        b
    }
}

/// A seed from the environment (`CAISSE_TEST_SEED`) or the clock.
pub fn seed() -> u64 {
    std::env::var("CAISSE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// A JSON value as text (strings without quotes).
pub fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Wait for an observable condition, with a deadline; returns how long it took.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Carry a proposal through a two-seat parliament (seat-1 and seat-2 vote yes).
pub fn pass(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["parliament", "propose", "--title", "motion"];
    all.extend_from_slice(args);
    let id = s(&ok(dir, &all)["id"]);
    for seat in ["seat-1", "seat-2"] {
        ok(
            dir,
            &[
                "parliament",
                "vote",
                "--proposal",
                &id,
                "--seat",
                seat,
                "--choice",
                "yes",
            ],
        );
    }
    let closed = ok(dir, &["parliament", "close", "--proposal", &id]);
    assert_eq!(closed["outcome"]["passed"], true, "{closed}");
    closed
}

/// The node.json a running node wrote.
pub fn node_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).unwrap()).unwrap()
}

/// Seat two citizens (members who joined on `joined`) in the parliament, so
/// [`pass`] can carry proposals.
pub fn seat_parliament(dir: &Path, joined: &str) {
    for i in 0..2 {
        let m = ok(
            dir,
            &[
                "member",
                "enroll",
                "--name",
                &format!("Élue {i}"),
                "--residence",
                "Ici",
                "--joined",
                joined,
            ],
        );
        ok(
            dir,
            &[
                "parliament",
                "seat",
                "add",
                "--kind",
                "citizen",
                "--member",
                &s(&m["member"]),
            ],
        );
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, headers, body).
pub fn http(
    api: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let addr: std::net::SocketAddr = api.parse().expect("an address");
    let mut c =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the node");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = raw[(split + 4).min(raw.len())..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 2 + n {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// Sign in to the console at `path` with a form's `fields`: the session cookie.
pub fn console_sign_in(api: &str, path: &str, fields: &[(&str, &str)]) -> String {
    let (_, head, body) = http(api, "GET", "/", &[], b"");
    let cookie = session_cookie(&head).expect("a visitor's cookie");
    let csrf = csrf_of(&body);
    let mut form = format!("csrf={csrf}");
    for (k, v) in fields {
        form.push_str(&format!("&{k}={v}"));
    }
    let (code, head, _) = http(
        api,
        "POST",
        path,
        &[
            ("Cookie", &format!("caisse_session={cookie}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    );
    assert_eq!(code, 303, "sign-in refused: {head}");
    session_cookie(&head).expect("a session cookie")
}

/// The session cookie a response sets.
pub fn session_cookie(head: &str) -> Option<String> {
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .find_map(|l| l.split_once("caisse_session=").map(|(_, v)| v))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

/// The CSRF token of the first form on a page.
pub fn csrf_of(body: &[u8]) -> String {
    let page = String::from_utf8_lossy(body);
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_owned()
}
