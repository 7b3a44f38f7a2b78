//! A real headless Chromium driven over the DevTools protocol (a WebSocket on a loopback port):
//! navigate, run JavaScript in the page, take screenshots. Chromium runs with a temporary
//! profile; dropping the [`Browser`] kills it and every process it started, each by its pid.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium --headless` (with `--no-sandbox`: tests run as root) and connects to
    /// its first tab.
    pub fn start() -> Browser {
        let chromium = super::require_tool("chromium", "apt-get install chromium");
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().expect("start chromium");
        let port = devtools_port(profile.path());
        let url = page_socket_url(port);
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket handshake");
        let mut browser = Browser { child, socket, next_id: 0, _profile: profile };
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params) {
            Ok(result) => result,
            Err(message) => panic!("{method} failed: {message}"),
        }
    }

    /// Sends one DevTools command: its result, or the whole answer when it is an error.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::text(request)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let text = match self.socket.read().expect("DevTools message") {
                Message::Text(text) => text,
                _ => continue,
            };
            let message: Value = serde_json::from_str(text.as_str()).unwrap();
            if message["id"] == id {
                return match message.get("error") {
                    None => Ok(message["result"].clone()),
                    Some(_) => Err(message),
                };
            }
        }
        panic!("no answer to {method} within 60 s");
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// The value of a JavaScript expression evaluated in the page (awaited if a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy (up to `limit`); its last value.
    pub fn wait_for(&mut self, expression: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            // Between navigations the page may have no context yet, or the evaluation may be cut
            // short by the navigation ("Inspected target navigated or closed"): try again.
            let answer = self.try_call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            );
            let (value, settled) = match &answer {
                Ok(result) => (result["result"]["value"].clone(), result.get("exceptionDetails").is_none()),
                Err(error) => (error.clone(), false),
            };
            let truthy = !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") && value != json!(0);
            if (truthy && settled) || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap()
    }

    /// Renders the page as a phone would (width in CSS pixels, touch, scale 2).
    pub fn emulate_phone(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 2, "mobile": true }),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser and every process it started (renderer, GPU, zygote), each by its pid.
        let descendants = descendants_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !descendants.is_empty() {
            let pids: Vec<String> = descendants.iter().map(u32::to_string).collect();
            let _ = Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
        }
    }
}

/// The pids of every process descending from `root` (from `/proc/*/stat`).
fn descendants_of(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the command name (which may hold spaces) start after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.retain(|pid| *pid != root && *pid > 1);
    found
}

/// The port Chromium chose, from the `DevToolsActivePort` file it writes into its profile.
fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(port) = std::fs::read_to_string(&file).ok().and_then(|t| t.lines().next()?.trim().parse().ok()) {
            return port;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromium did not open its DevTools port within 30 s");
}

/// The WebSocket URL of the first tab (`/json/list`).
fn page_socket_url(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(targets) = serde_json::from_slice::<Vec<Value>>(&http_get(&addr, "/json/list"))
            && let Some(page) = targets.iter().find(|t| t["type"] == "page")
        {
            return page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromium has no tab to drive");
}

/// The body of a GET to Chromium's DevTools HTTP server, read up to its Content-Length (the
/// server keeps the connection open, so reading to the end would wait for a timeout).
fn http_get(addr: &str, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(addr) else { return Vec::new() };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        got.extend_from_slice(&chunk[..n]);
        let Some(head) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let length = String::from_utf8_lossy(&got[..head])
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(length) = length
            && got.len() >= head + 4 + length
        {
            return got[head + 4..head + 4 + length].to_vec();
        }
    }
    Vec::new()
}

/// Width and height of a PNG, from its header; panics unless `png` is a PNG.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Serves `html` for every request on a loopback port, from a thread of its own, and returns
/// the origin (`http://127.0.0.1:PORT`): a page of another origin than the server under test.
/// The thread ends with the test process; it only answers connections the test's browser makes.
pub fn serve_page(html: &str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
        html.len()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            // The request head (browsers send no body with these GETs).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 && matches!(stream.read(&mut byte), Ok(1)) {
                head.push(byte[0]);
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    origin
}
