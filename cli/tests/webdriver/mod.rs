//! A small W3C WebDriver client for the console's browser tests: starts
//! Debian's `chromedriver` on a free loopback port and drives headless
//! Chromium through it. Just what the tests need: navigate, find, type,
//! click, run a script, read cookies, take screenshots.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian puts them (`apt-get install chromium chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// True when the browser and its driver are installed. Otherwise the test
/// is skipped with a message saying how to install them, so that the test
/// command works on a machine with only the Rust toolchain; CI sets
/// `CAISSE_REQUIRE_BROWSER=1` (after installing them), and then a missing
/// browser fails the test instead.
pub fn available() -> bool {
    if std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    let how = "the browser tests need Debian's chromium and chromium-driver: \
               `apt-get install chromium chromium-driver` (.ci/run installs them when missing)";
    if std::env::var("CAISSE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{how}");
    }
    eprintln!("SKIPPED the browser test: {how}");
    false
}

/// A browser session, with its driver process (both ended on drop).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    profile: tempfile::TempDir,
}

/// An element found on the page.
#[derive(Clone, Debug)]
pub struct Element(String);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Browser {
    /// Start chromedriver and a headless Chromium whose preferred language is `accept_language`.
    pub fn start(accept_language: &str) -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            rt,
            profile: tempfile::tempdir().expect("profile dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !b
            .call("GET", "/status", None)
            .is_ok_and(|v| v["ready"] == true)
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", b.profile.path().display()),
                    format!("--lang={accept_language}"),
                    "--window-size=1280,900",
                ],
                "prefs": { "intl.accept_languages": accept_language },
            }
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("could not start a browser session: {e}"));
        b.session = v["sessionId"].as_str().unwrap_or_default().to_owned();
        assert!(!b.session.is_empty(), "no session id in {v}");
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{}", self.base, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let req = self.http.request(m, &url);
        let req = match body {
            Some(b) => req.json(&b),
            None if method == "POST" => req.json(&json!({})),
            None => req,
        };
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let v: Value = resp.json().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(v["value"].clone())
            } else {
                Err(format!("{method} {path}: {status} {}", v["value"]))
            }
        })
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{}", self.session, path);
        self.call(method, &p, body)
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    /// Go to `url` and wait for it to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current address.
    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML as it is now.
    pub fn source(&self) -> String {
        self.session_call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching a CSS selector, if any.
    pub fn try_find(&self, css: &str) -> Option<Element> {
        let p = format!("/session/{}/element", self.session);
        let v = self
            .call(
                "POST",
                &p,
                Some(json!({ "using": "css selector", "value": css })),
            )
            .ok()?;
        v[ELEMENT].as_str().map(|s| Element(s.to_owned()))
    }

    /// The first element matching a CSS selector (waiting up to 10 s for it).
    pub fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} on {}:\n{}",
                self.url(),
                self.body_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Type into an element (after clearing it).
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.session_call("POST", &format!("/element/{}/clear", e.0), None);
        self.session_call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        );
    }

    /// Click an element.
    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.session_call("POST", &format!("/element/{}/click", e.0), None);
    }

    /// The visible text of an element.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.session_call("GET", &format!("/element/{}/text", e.0), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The visible text of the whole page.
    pub fn body_text(&self) -> String {
        match self.try_find("body") {
            Some(e) => self
                .call(
                    "GET",
                    &format!("/session/{}/element/{}/text", self.session, e.0),
                    None,
                )
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// An element property (`value` of an input…).
    pub fn property(&self, css: &str, name: &str) -> String {
        let e = self.find(css);
        self.session_call("GET", &format!("/element/{}/property/{name}", e.0), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Run a script in the page; returns its value.
    pub fn script(&self, js: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let p = format!("/session/{}/cookie/{name}", self.session);
        self.call("GET", &p, None)
            .ok()
            .and_then(|v| v["value"].as_str().map(str::to_owned))
    }

    /// Resize the window.
    pub fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.session_call("GET", "/screenshot", None);
        base64_decode(v.as_str().unwrap_or_default())
    }

    /// Wait until the page's text contains `needle`.
    pub fn wait_text(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.body_text();
            if t.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "page {} never showed {needle:?}; it shows:\n{t}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let p = format!("/session/{}", self.session);
            let _ = self.call("DELETE", &p, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Decode standard base64 (the screenshot format).
pub fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A plain HTTP request outside the browser (for exact status codes):
/// `cookie` is sent as the session cookie, `form` as a urlencoded body.
pub fn http(
    method: &str,
    url: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client.request(m, url);
        if let Some(c) = cookie {
            req = req.header("Cookie", format!("caisse_session={c}"));
        }
        if let Some(f) = form {
            let body: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.join("&"));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    })
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
