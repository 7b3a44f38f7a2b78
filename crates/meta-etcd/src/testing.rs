//! Real etcd clusters for tests (feature `test-cluster`).
//!
//! [`EtcdCluster::start`] runs N `etcd` processes (Debian package `etcd-server`) on free
//! loopback ports with temporary data directories, waits until every member is healthy, and
//! stops them all when dropped. Members can be killed with `SIGKILL` ([`EtcdCluster::kill`]),
//! frozen with `SIGSTOP` ([`EtcdCluster::freeze`]), restarted on their old data
//! ([`EtcdCluster::restart`]), and non-voting learners can be added ([`EtcdCluster::add_learner`]).
//!
//! For WAN tests, [`EtcdCluster::builder`] exposes every member's listen and advertise URLs
//! before start, so a proxy can sit between clients and members (advertise the proxy's client
//! URL) or between members (advertise the proxy's peer URL). Peer proxies must be forwarding
//! before `start()`, which waits for the members to elect a leader. Health checks always use
//! the listen URLs, so they do not depend on the proxies.
//!
//! ```no_run
//! # use meridian_meta_etcd::testing::EtcdCluster;
//! let mut builder = EtcdCluster::builder(3);
//! let member = builder.member_mut(0);
//! // Peers reach member 0 through a proxy listening on 127.0.0.1:23800 that forwards to
//! // member.listen_peer_url.
//! member.advertise_peer_url = "http://127.0.0.1:23800".into();
//! let cluster = builder.start();
//! ```
//!
//! Every member runs with `--max-txn-ops 32768 --max-request-bytes 16777216` (what Meridian
//! requires of production clusters, see `docs/etcd.md`) and a 2 s election timeout. Data directories live on `/dev/shm`
//! when it exists (tmpfs: a `kill -9` of a process keeps what it wrote exactly as a disk would;
//! power loss is not simulated) — set `MERIDIAN_ETCD_TEST_DIR` to use another directory.
//!
//! [`EtcdClusterBuilder::client_tls`] makes the client URLs `https://` only, with a certificate
//! for 127.0.0.1 and localhost made at start ([`TestCert`]; its file is also the CA file clients
//! trust). The harness's own health and status requests then use TLS too. Peer traffic between
//! members stays plain `http://` unless [`EtcdClusterBuilder::peer_tls`] asks for `https://`
//! there too, with the same certificate. [`EtcdClusterBuilder::client_cert_auth`] also makes
//! the members refuse clients without a certificate they trust (the same one again).
//!
//! If `etcd` is not installed, starting a cluster panics and says how to install it: tests that
//! need etcd never pass silently. `ETCD_BIN` overrides the binary.
//!
//! Each etcd process runs under a small `sh` guard that kills it when the test process exits,
//! even by `SIGKILL` or a test-runner timeout, so no etcd outlives its test.

// Test support: a failure here is a failed test, reported with the member's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;

/// The etcd flags every test member gets (Meridian's production requirements).
pub const REQUIRED_FLAGS: &[&str] = &["--max-txn-ops", "32768", "--max-request-bytes", "16777216"];

/// Flags for a busy test machine: a 2 s election timeout (etcd's default is 1 s) so that a
/// member starved of CPU for a moment does not start an election. Flags given with
/// [`EtcdClusterBuilder::arg`] come later and win.
pub const TEST_FLAGS: &[&str] = &["--heartbeat-interval", "100", "--election-timeout", "2000"];

/// How long a cluster (or a restarted member) may take to become healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Kills etcd when the test process goes away: the guard waits for a line on its stdin (a pipe
/// from the test). At end-of-file — the test process is gone, even by `SIGKILL` — it kills etcd
/// (its own child, so the pid cannot have been reused) and deletes the cluster's directory. A
/// deliberate kill sends `keep` first, so a restarted member finds its data.
const GUARD: &str = r#""$0" "$@" >>"$MERIDIAN_ETCD_LOG" 2>&1 </dev/null &
pid=$!
echo "$pid"
read -r keep || keep=""
kill -9 "$pid" 2>/dev/null
wait "$pid"
[ "$keep" = keep ] || rm -rf "$MERIDIAN_ETCD_DIR"
"#;

/// A self-signed certificate for 127.0.0.1 and localhost, made at test time, as PEM files: a
/// server's certificate and key, and the CA file its clients trust. Deleted when dropped.
pub struct TestCert {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = tempfile::tempdir().expect("create a directory for a test certificate");
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("make a self-signed certificate");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("write the test certificate");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the test key");
        TestCert { _dir: dir, cert, key }
    }

    /// A rustls client configuration trusting only this certificate; with `present_it`, it
    /// also presents this certificate as its client certificate.
    fn client_config(&self, present_it: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rustls::pki_types::CertificateDer::from_pem_file(&self.cert).expect("read the test certificate");
        roots.add(cert.clone()).expect("the test certificate is a usable root");
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots);
        let config = if present_it {
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&self.key).expect("read the test key");
            builder.with_client_auth_cert(vec![cert], key).expect("the test certificate and key match")
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

impl Default for TestCert {
    fn default() -> Self {
        TestCert::new()
    }
}

/// Where one member listens and what it tells others. URLs are `http://host:port`, client URLs
/// `https://host:port` with [`EtcdClusterBuilder::client_tls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    pub name: String,
    /// `--listen-client-urls`: where the process accepts clients.
    pub listen_client_url: String,
    /// `--advertise-client-urls`: what clients are told to use (and what
    /// [`EtcdCluster::client_endpoints`] returns). Point it at a proxy to interpose one.
    pub advertise_client_url: String,
    /// `--listen-peer-urls`: where the process accepts other members.
    pub listen_peer_url: String,
    /// `--initial-advertise-peer-urls` and this member's entry in `--initial-cluster`: how the
    /// other members reach it. Point it at a proxy to interpose one.
    pub advertise_peer_url: String,
}

impl MemberSpec {
    /// A member on fresh loopback ports (held open until the cluster starts).
    fn on_free_ports(name: String, held: &mut Vec<TcpListener>) -> Self {
        let client = free_port(held);
        let peer = free_port(held);
        MemberSpec {
            name,
            listen_client_url: format!("http://127.0.0.1:{client}"),
            advertise_client_url: format!("http://127.0.0.1:{client}"),
            listen_peer_url: format!("http://127.0.0.1:{peer}"),
            advertise_peer_url: format!("http://127.0.0.1:{peer}"),
        }
    }

    /// The client URLs with `https://`.
    fn with_tls(mut self) -> Self {
        for url in [&mut self.listen_client_url, &mut self.advertise_client_url] {
            *url = https(url);
        }
        self
    }

    /// The peer URLs with `https://`.
    fn with_peer_tls(mut self) -> Self {
        for url in [&mut self.listen_peer_url, &mut self.advertise_peer_url] {
            *url = https(url);
        }
        self
    }

    /// The URLs the cluster's TLS settings call for.
    fn secured(self, tls: &TlsSettings) -> Self {
        let spec = if tls.cert.is_some() { self.with_tls() } else { self };
        if tls.peer { spec.with_peer_tls() } else { spec }
    }
}

fn https(url: &str) -> String {
    url.strip_prefix("http://").map_or_else(|| url.to_string(), |rest| format!("https://{rest}"))
}

/// [`EtcdClusterBuilder::client_tls`] and [`EtcdClusterBuilder::peer_tls`].
#[derive(Clone, Default)]
struct TlsSettings {
    cert: Option<Arc<TestCert>>,
    peer: bool,
    client_cert_auth: bool,
}

impl TlsSettings {
    /// etcd's TLS flags.
    fn args(&self) -> Vec<String> {
        let Some(cert) = &self.cert else { return Vec::new() };
        let (cert, key) = (cert.cert.to_string_lossy().into_owned(), cert.key.to_string_lossy().into_owned());
        let mut args = vec!["--cert-file".into(), cert.clone(), "--key-file".into(), key.clone()];
        if self.client_cert_auth {
            args.extend(["--client-cert-auth".into(), "--trusted-ca-file".into(), cert.clone()]);
        }
        if self.peer {
            args.extend(["--peer-cert-file".into(), cert.clone(), "--peer-key-file".into(), key]);
            args.extend(["--peer-trusted-ca-file".into(), cert]);
        }
        args
    }
}

/// Reserves a free loopback port; the listener is kept until the member starts.
fn free_port(held: &mut Vec<TcpListener>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let port = listener.local_addr().expect("local address").port();
    held.push(listener);
    port
}

/// Configures a cluster before starting it.
pub struct EtcdClusterBuilder {
    specs: Vec<MemberSpec>,
    bin: Option<PathBuf>,
    extra_args: Vec<String>,
    held: Vec<TcpListener>,
    customized: bool,
    tls: TlsSettings,
}

impl EtcdClusterBuilder {
    /// Member `index`'s URLs and name.
    pub fn member(&self, index: usize) -> &MemberSpec {
        &self.specs[index]
    }

    /// Member `index`'s URLs and name, to change before start (for instance to advertise a
    /// proxy). Ports chosen here are free now; anything you set is used as given.
    pub fn member_mut(&mut self, index: usize) -> &mut MemberSpec {
        self.customized = true;
        &mut self.specs[index]
    }

    /// Adds an etcd flag for every member (e.g. `--heartbeat-interval`, `--election-timeout`,
    /// `--auto-compaction-retention`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Serves clients over TLS only: every member's client URLs become `https://` (call this
    /// before changing a member's URLs), with a [`TestCert`] made now
    /// ([`EtcdCluster::tls_cert`]).
    pub fn client_tls(mut self) -> Self {
        self.specs = self.specs.into_iter().map(MemberSpec::with_tls).collect();
        self.tls.cert = Some(Arc::new(TestCert::new()));
        self
    }

    /// Also encrypts traffic between members: `https://` peer URLs with the same certificate
    /// (implies [`EtcdClusterBuilder::client_tls`]; call this before changing a member's URLs).
    pub fn peer_tls(mut self) -> Self {
        if self.tls.cert.is_none() {
            self = self.client_tls();
        }
        self.specs = self.specs.into_iter().map(MemberSpec::with_peer_tls).collect();
        self.tls.peer = true;
        self
    }

    /// Also requires clients to present a certificate signed by the members' certificate
    /// (etcd's `--client-cert-auth --trusted-ca-file`; implies [`EtcdClusterBuilder::client_tls`]).
    /// The [`TestCert`] itself is such a client certificate: its key is the client key.
    pub fn client_cert_auth(mut self) -> Self {
        if self.tls.cert.is_none() {
            self = self.client_tls();
        }
        self.tls.client_cert_auth = true;
        self
    }

    /// Runs this etcd binary instead of `$ETCD_BIN`, `etcd` on the `PATH` or `/usr/bin/etcd`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Starts every member and waits until all are healthy. Panics (with the members' logs) if
    /// etcd is missing or the cluster does not come up.
    pub fn start(self) -> EtcdCluster {
        let bin = etcd_binary(self.bin.as_deref());
        let mut builder = self;
        for attempt in 1.. {
            let n = builder.specs.len();
            let extra = builder.extra_args.clone();
            let customized = builder.customized;
            let tls = builder.tls.clone();
            match EtcdCluster::launch(&bin, builder) {
                Ok(cluster) => return cluster,
                // Another process took one of the ports between reservation and start.
                Err(Launch::PortTaken(report)) if !customized && attempt < 4 => {
                    eprintln!("etcd test cluster: a port was taken, retrying:\n{report}");
                    builder = EtcdCluster::builder(n);
                    builder.specs = builder.specs.into_iter().map(|spec| spec.secured(&tls)).collect();
                    builder.tls = tls;
                    builder.extra_args = extra;
                    builder.bin = Some(bin.clone());
                }
                Err(Launch::PortTaken(report) | Launch::Failed(report)) => {
                    panic!("etcd test cluster did not start:\n{report}")
                }
            }
        }
        unreachable!("the loop returns or panics")
    }
}

enum Launch {
    PortTaken(String),
    Failed(String),
}

/// A running etcd process and its guard.
struct Process {
    guard: Child,
    pid: u32,
}

impl Process {
    fn spawn(bin: &Path, args: &[String], log: &Path, dir: &Path) -> Process {
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg(bin)
            .args(args)
            .env("MERIDIAN_ETCD_LOG", log)
            .env("MERIDIAN_ETCD_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // etcd's own output goes to its log; this is only the guard's job-control chatter.
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh to run etcd");
        let mut line = String::new();
        BufReader::new(guard.stdout.take().expect("guard stdout")).read_line(&mut line).expect("read etcd's pid");
        let pid = line.trim().parse().unwrap_or_else(|_| panic!("etcd guard printed {line:?} instead of a pid"));
        Process { guard, pid }
    }

    fn signal(&self, signal: &str) {
        let status =
            Command::new("sh").arg("-c").arg(format!("kill -{signal} {}", self.pid)).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// `kill -9`, then wait until the process is gone. `keep`: leave the data for a restart.
    fn kill(mut self, keep: bool) {
        let _ = Command::new("sh").arg("-c").arg(format!("kill -9 {} 2>/dev/null", self.pid)).status();
        if let Some(mut stdin) = self.guard.stdin.take() {
            if keep {
                let _ = stdin.write_all(b"keep\n");
            }
            // Closing the guard's stdin makes it reap etcd and exit.
            drop(stdin);
        }
        let _ = self.guard.wait();
    }

    fn exited(&mut self) -> bool {
        // The guard exits only after etcd does (or when told to).
        !Path::new(&format!("/proc/{}", self.pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|stat| stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
                .unwrap_or(true)
            || matches!(self.guard.try_wait(), Ok(Some(_)))
    }
}

struct Member {
    spec: MemberSpec,
    data_dir: PathBuf,
    log: PathBuf,
    /// `--initial-cluster` and `--initial-cluster-state` used when the member first started.
    initial_cluster: String,
    initial_state: &'static str,
    learner: bool,
    process: Option<Process>,
}

/// A running etcd cluster for tests. Dropping it kills every member and deletes its data.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    token: String,
    extra_args: Vec<String>,
    members: Vec<Member>,
    tls: TlsSettings,
    /// Trusts `tls`'s certificate, for the harness's own requests.
    tls_client: Option<Arc<rustls::ClientConfig>>,
}

impl EtcdCluster {
    /// Starts `members` voting members on free loopback ports and waits until they are healthy.
    pub fn start(members: usize) -> EtcdCluster {
        EtcdCluster::builder(members).start()
    }

    /// A cluster of `members` voting members to configure before [`EtcdClusterBuilder::start`].
    pub fn builder(members: usize) -> EtcdClusterBuilder {
        assert!(members > 0, "an etcd cluster needs at least one member");
        let mut held = Vec::new();
        let specs = (0..members).map(|i| MemberSpec::on_free_ports(format!("m{i}"), &mut held)).collect();
        EtcdClusterBuilder {
            specs,
            bin: None,
            extra_args: Vec::new(),
            held,
            customized: false,
            tls: TlsSettings::default(),
        }
    }

    fn launch(bin: &Path, builder: EtcdClusterBuilder) -> Result<EtcdCluster, Launch> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-etcd-")
            .tempdir_in(test_dir())
            .expect("create a directory for the etcd test cluster");
        let token =
            dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "meridian-test".into());
        let initial_cluster =
            builder.specs.iter().map(|s| format!("{}={}", s.name, s.advertise_peer_url)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster {
            bin: bin.to_path_buf(),
            token,
            extra_args: builder.extra_args,
            members: builder
                .specs
                .into_iter()
                .map(|spec| Member {
                    data_dir: dir.path().join(&spec.name),
                    log: dir.path().join(format!("{}.log", spec.name)),
                    spec,
                    initial_cluster: initial_cluster.clone(),
                    initial_state: "new",
                    learner: false,
                    process: None,
                })
                .collect(),
            dir,
            tls_client: builder.tls.cert.as_ref().map(|cert| cert.client_config(builder.tls.client_cert_auth)),
            tls: builder.tls,
        };
        // Free the reserved ports just before etcd binds them.
        drop(builder.held);
        for index in 0..cluster.members.len() {
            cluster.spawn(index);
        }
        let all: Vec<usize> = (0..cluster.members.len()).collect();
        cluster.wait_until_healthy(&all)?;
        Ok(cluster)
    }

    fn args(&self, member: &Member) -> Vec<String> {
        let spec = &member.spec;
        let mut args: Vec<String> = [
            "--name",
            &spec.name,
            "--data-dir",
            &member.data_dir.to_string_lossy(),
            "--listen-client-urls",
            &spec.listen_client_url,
            "--advertise-client-urls",
            &spec.advertise_client_url,
            "--listen-peer-urls",
            &spec.listen_peer_url,
            "--initial-advertise-peer-urls",
            &spec.advertise_peer_url,
            "--initial-cluster",
            &member.initial_cluster,
            "--initial-cluster-state",
            member.initial_state,
            "--initial-cluster-token",
            &self.token,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(self.tls.args());
        args.extend(REQUIRED_FLAGS.iter().map(ToString::to_string));
        args.extend(TEST_FLAGS.iter().map(ToString::to_string));
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, index: usize) {
        let args = self.args(&self.members[index]);
        let dir = self.dir.path().to_path_buf();
        let member = &mut self.members[index];
        assert!(member.process.is_none(), "member {index} is already running");
        member.process = Some(Process::spawn(&self.bin, &args, &member.log, &dir));
    }

    fn wait_until_healthy(&mut self, members: &[usize]) -> Result<(), Launch> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let mut all_healthy = true;
            for &index in members {
                let member = &mut self.members[index];
                let process = member.process.as_mut().expect("member was started");
                if process.exited() {
                    let report = self.report(index);
                    return Err(if report.contains("address already in use") {
                        Launch::PortTaken(report)
                    } else {
                        Launch::Failed(format!("member {index} exited\n{report}"))
                    });
                }
                if !self.healthy(index) {
                    all_healthy = false;
                }
            }
            if all_healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                let reports: Vec<String> = members.iter().map(|&i| self.report(i)).collect();
                return Err(Launch::Failed(format!("not healthy within {STARTUP_TIMEOUT:?}\n{}", reports.join("\n"))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when member `index` answers `/health` with `true` (it is running and has a leader).
    pub fn healthy(&self, index: usize) -> bool {
        let url = direct_url(&self.members[index].spec.listen_client_url);
        match self.http(&url, "GET", "/health", None) {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("health").and_then(|h| h.as_str().map(|h| h == "true")))
                .unwrap_or(false),
            _ => false,
        }
    }

    /// The member's name, URLs and log, for failure messages.
    fn report(&self, index: usize) -> String {
        let member = &self.members[index];
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- etcd member {index} ({}; client {}; peer {}); last log lines of {}:\n{}",
            member.spec.name,
            member.spec.listen_client_url,
            member.spec.listen_peer_url,
            member.log.display(),
            tail.join("\n")
        )
    }

    /// Number of members (voters and learners, running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The advertised client URL of every member, in member order (for [`crate::EtcdOptions`]).
    pub fn client_endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.spec.advertise_client_url.clone()).collect()
    }

    /// Member `index`'s advertised client URL.
    pub fn client_endpoint(&self, index: usize) -> String {
        self.members[index].spec.advertise_client_url.clone()
    }

    /// Member `index`'s URLs and name.
    pub fn member(&self, index: usize) -> &MemberSpec {
        &self.members[index].spec
    }

    /// With [`EtcdClusterBuilder::client_tls`]: the members' certificate, which is also the CA
    /// file their clients trust.
    pub fn tls_cert(&self) -> Option<&TestCert> {
        self.tls.cert.as_deref()
    }

    /// An etcd request from the harness (TLS for `https://` URLs).
    fn http(&self, url: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
        http(url, self.tls_client.as_ref(), method, path, body)
    }

    pub fn is_learner(&self, index: usize) -> bool {
        self.members[index].learner
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].process.is_some()
    }

    /// The directory holding every member's data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Member `index`'s log so far.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.members[index].log).unwrap_or_default()
    }

    /// `kill -9` member `index` and wait until it is gone.
    pub fn kill(&mut self, index: usize) {
        let process = self.members[index].process.take().unwrap_or_else(|| panic!("member {index} is not running"));
        process.kill(true);
    }

    /// `SIGSTOP` member `index`: it keeps its connections but answers nothing (a hung machine
    /// or a silent network partition). [`EtcdCluster::thaw`] resumes it.
    pub fn freeze(&self, index: usize) {
        self.process(index).signal("STOP");
    }

    /// `SIGCONT` a frozen member.
    pub fn thaw(&self, index: usize) {
        self.process(index).signal("CONT");
    }

    fn process(&self, index: usize) -> &Process {
        self.members[index].process.as_ref().unwrap_or_else(|| panic!("member {index} is not running"))
    }

    /// Starts a killed member again on its old data and waits until it is healthy.
    pub fn restart(&mut self, index: usize) {
        self.spawn(index);
        if let Err(Launch::PortTaken(report) | Launch::Failed(report)) = self.wait_until_healthy(&[index]) {
            panic!("etcd member {index} did not come back:\n{report}");
        }
    }

    /// The index of the current leader, if the running members agree on one.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for member in &self.members {
            if member.process.is_none() {
                ids.push(None);
                continue;
            }
            let url = direct_url(&member.spec.listen_client_url);
            let status = self
                .http(&url, "POST", "/v3/maintenance/status", Some("{}"))
                .ok()
                .and_then(|(code, body)| (code == 200).then_some(body))
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok());
            let id = status.as_ref().and_then(|s| s.pointer("/header/member_id")).and_then(json_u64);
            let member_leader = status.as_ref().and_then(|s| s.get("leader")).and_then(json_u64);
            ids.push(id);
            if let Some(l) = member_leader.filter(|l| *l != 0) {
                match leader {
                    None => leader = Some(l),
                    Some(known) if known != l => return None,
                    Some(_) => {}
                }
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Waits until the running members agree on a leader and returns its index.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "the etcd members did not agree on a leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds a non-voting learner (`etcdctl member add --learner`), starts it on fresh loopback
    /// ports, waits until it is healthy and returns its index.
    pub fn add_learner(&mut self) -> usize {
        let mut held = Vec::new();
        let spec = MemberSpec::on_free_ports(format!("m{}", self.members.len()), &mut held).secured(&self.tls);
        self.add_learner_with(spec, held)
    }

    /// Like [`EtcdCluster::add_learner`] with URLs of the caller's choice (e.g. behind a proxy).
    pub fn add_learner_spec(&mut self, spec: MemberSpec) -> usize {
        self.add_learner_with(spec, Vec::new())
    }

    fn add_learner_with(&mut self, spec: MemberSpec, held: Vec<TcpListener>) -> usize {
        let body = serde_json::json!({
            "peerURLs": [spec.advertise_peer_url],
            "isLearner": true,
        })
        .to_string();
        let voter = (0..self.members.len())
            .find(|&i| self.members[i].process.is_some() && !self.members[i].learner)
            .expect("a running voting member to add the learner through");
        let url = direct_url(&self.members[voter].spec.listen_client_url);
        // etcd refuses membership changes ("unhealthy cluster") until every member has been
        // connected for a few seconds, so a fresh cluster needs a moment.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let (code, answer) =
                self.http(&url, "POST", "/v3/cluster/member/add", Some(&body)).expect("ask etcd to add a learner");
            if code == 200 {
                break;
            }
            assert!(
                answer.contains("unhealthy cluster") && Instant::now() < deadline,
                "etcd refused to add a learner: {answer}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut initial_cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}={}", m.spec.name, m.spec.advertise_peer_url)).collect();
        initial_cluster.push(format!("{}={}", spec.name, spec.advertise_peer_url));
        let index = self.members.len();
        self.members.push(Member {
            data_dir: self.dir.path().join(&spec.name),
            log: self.dir.path().join(format!("{}.log", spec.name)),
            spec,
            initial_cluster: initial_cluster.join(","),
            initial_state: "existing",
            learner: true,
            process: None,
        });
        drop(held);
        self.spawn(index);
        if let Err(Launch::PortTaken(report) | Launch::Failed(report)) = self.wait_until_healthy(&[index]) {
            panic!("etcd learner did not start:\n{report}");
        }
        index
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for index in 0..self.members.len() {
                eprintln!("{}", self.report(index));
            }
        }
        for member in &mut self.members {
            if let Some(process) = member.process.take() {
                process.kill(false);
            }
        }
    }
}

fn json_u64(value: &serde_json::Value) -> Option<u64> {
    // The gRPC gateway writes 64-bit integers as strings.
    value.as_str().and_then(|s| s.parse().ok()).or_else(|| value.as_u64())
}

/// The URL to reach a member directly (not through whatever it advertises).
fn direct_url(listen: &str) -> String {
    listen.replace("0.0.0.0", "127.0.0.1")
}

/// A minimal HTTP/1.0 client for etcd's `/health` and JSON gateway (no extra dependencies),
/// over TLS for `https://` URLs.
fn http(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let (secure, host) = match url.strip_prefix("https://") {
        Some(host) => (true, host),
        None => (false, url.trim_start_matches("http://")),
    };
    let host = host.trim_end_matches('/');
    let addr = host.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other(format!("cannot resolve {host}")))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = match (secure, tls) {
        (false, _) => exchange(stream, &request)?,
        (true, Some(config)) => {
            let tls =
                rustls::ClientConnection::new(Arc::clone(config), addr.ip().into()).map_err(std::io::Error::other)?;
            exchange(rustls::StreamOwned::new(tls, stream), &request)?
        }
        (true, None) => return Err(std::io::Error::other(format!("{url}: https but the cluster has no certificate"))),
    };
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Sends `request` and reads the response until the server closes the connection.
fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS peer that closes without a close_notify after a whole HTTP/1.0 response.
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(err) => return Err(err),
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The etcd binary; panics with installation advice when there is none.
fn etcd_binary(chosen: Option<&Path>) -> PathBuf {
    let missing = |what: String| -> ! {
        panic!(
            "{what}, so the etcd tests cannot run: install etcd-server (apt-get install \
             etcd-server; scripts/test.sh does it) or set ETCD_BIN to an etcd binary"
        )
    };
    let chosen = chosen.map(Path::to_path_buf).or_else(|| std::env::var_os("ETCD_BIN").map(PathBuf::from));
    if let Some(bin) = chosen {
        if bin.is_file() {
            return bin;
        }
        missing(format!("etcd binary {} does not exist", bin.display()));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("etcd")).find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
        .unwrap_or_else(|| missing("etcd is not installed".into()))
}

/// Where test clusters keep their data: `$MERIDIAN_ETCD_TEST_DIR`, else `/dev/shm`, else the
/// system temporary directory.
fn test_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MERIDIAN_ETCD_TEST_DIR") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    let writable = shm.is_dir() && tempfile::Builder::new().prefix("meridian-probe-").tempfile_in(&shm).is_ok();
    if writable { shm } else { std::env::temp_dir() }
}
