//! moto's S3 server (`moto_server`, `pip install 'moto[server]'`) for tests: an S3 service
//! Meridian did not write, on a free loopback port, killed on drop.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Where moto's request recorder writes (in the temp dir, not the working directory).
    recording: std::path::PathBuf,
}

impl Moto {
    /// Starts moto; panics with how to install it when `moto_server` is missing.
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let recording = std::env::temp_dir().join(format!("meridian-moto-recording-{port}"));
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "required tool `moto_server` cannot run ({e}): install it with `python3 -m pip install 'moto[server]'` (scripts/test.sh does)"
                )
            });
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}"), recording };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 30s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Where moto is, with the (any) keys it accepts.
    pub fn s3_endpoint(&self) -> crate::S3Endpoint {
        crate::S3Endpoint {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            access_key: "moto-access-key".into(),
            secret_key: "moto-secret-key".into(),
            ca_file: None,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.recording);
    }
}
