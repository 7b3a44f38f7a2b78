//! Node settings: defaults, overridden by a TOML file, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meridian_common::private_files;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9401";
pub const DEFAULT_DATA: &str = "meridian-data";
/// What `--print-config` shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Everything a node can be told, as it appears in the TOML file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data: Option<PathBuf>,
    /// S3 listen address.
    pub listen: Option<SocketAddr>,
    /// Admin API listen address.
    pub admin_listen: Option<SocketAddr>,
    /// Domain for virtual-host-style bucket addressing (`bucket.<domain>`).
    pub domain: Option<String>,
    /// Region name of this node.
    pub region: Option<String>,
    /// Id of this node in the cluster.
    pub node_id: Option<String>,
    /// URL other nodes reach this node at.
    pub advertise: Option<String>,
    /// etcd client URLs (join a cluster).
    #[serde(default)]
    pub etcd: Vec<String>,
    pub etcd_namespace: Option<String>,
    /// Client certificate and key (PEM) presented to etcd over https://.
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub cluster_token: Option<String>,
    /// Cache of bytes held by other regions.
    pub cache_max_bytes: Option<ByteSize>,
    /// Objects up to this size are copied to every region after they are written.
    pub replicate_small_bytes: Option<ByteSize>,
    /// Objects up to this size are stored inline in the metadata store.
    pub inline_max: Option<ByteSize>,
    /// Connection limits, applied to every listener (each keeps its own defaults otherwise).
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    /// Time allowed for a request's head (and TLS handshake) while connections are plentiful.
    pub header_read_timeout_ms: Option<u64>,
    /// How long a shutdown waits for open requests.
    pub drain_deadline_secs: Option<u64>,
    /// TLS certificate chain and key (PEM) for every listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for connections to other nodes and to etcd.
    pub ca_file: Option<PathBuf>,
    /// Log format: "text" or "json".
    pub log_format: Option<String>,
    /// Revisions of change history kept for watches (older `since` values get 410).
    pub history_revisions: Option<u64>,
    /// Read-only token for `GET /metrics` on the admin listener.
    pub status_token: Option<String>,
    /// Address of a listener serving `/metrics` without a token.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the web edge (buckets served as websites); no edge when absent.
    pub web_listen: Option<SocketAddr>,
    /// URL other regions' edges reach this node's edge at.
    pub web_advertise: Option<String>,
    /// Buckets with a website configuration are served at `<bucket>.<web_domain>`.
    pub web_domain: Option<String>,
    /// Sites the web edge serves (`[[site]]` tables).
    #[serde(default, rename = "site")]
    pub sites: Vec<meridian_engine::website::SiteRecord>,
    /// Origin apps of sites (`[[origin]]` tables, each with `[[origin.region]]` tables).
    #[serde(default, rename = "origin")]
    pub origins: Vec<meridian_edge::origin::SiteOrigin>,
    /// Most measured replication lag (ms) of a cluster node that is still ready.
    pub ready_max_lag_ms: Option<u64>,
    /// How long (ms) a silent holder of objects' bytes has before its copies are made again
    /// elsewhere.
    pub holder_lost_after_ms: Option<u64>,
    /// Object bytes in this S3 bucket instead of the data directory.
    pub blob_s3_bucket: Option<String>,
    pub blob_s3_endpoint: Option<String>,
    pub blob_s3_prefix: Option<String>,
    pub blob_s3_region: Option<String>,
    pub blob_s3_access_key: Option<String>,
    pub blob_s3_secret_key: Option<String>,
    pub blob_s3_ca_file: Option<PathBuf>,
    /// Age (seconds) at which the orphan scan of a blob bucket removes unreferenced blobs.
    pub blob_orphan_grace_secs: Option<u64>,
    /// Webhook targets of event notifications, each `NAME=URL`.
    #[serde(default)]
    pub notify_webhook: Vec<String>,
    /// Bearer tokens of webhook targets, each `NAME=TOKEN`.
    #[serde(default)]
    pub notify_webhook_token: Vec<String>,
}

/// Webhook targets from `NAME=URL` entries: names as [`meridian_engine::notify`] allows them,
/// `http://` or `https://` URLs, each name once.
pub fn webhooks(entries: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut targets = std::collections::BTreeMap::new();
    for entry in entries {
        let Some((name, url)) = entry.split_once('=') else {
            anyhow::bail!("a webhook target (--notify-webhook) is NAME=URL, not {entry:?}");
        };
        meridian_engine::notify::validate_target_name(name).map_err(anyhow::Error::msg)?;
        let uri: http::Uri = url.parse().with_context(|| format!("webhook target {name}: bad URL {url:?}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            anyhow::bail!("webhook target {name}: the URL must be http:// or https:// with a host, not {url:?}");
        }
        if targets.insert(name.to_string(), url.to_string()).is_some() {
            anyhow::bail!("webhook target {name} is given twice");
        }
    }
    Ok(targets)
}

/// Bearer tokens from `NAME=TOKEN` entries, each naming one of `targets` once.
pub fn webhook_tokens(
    entries: &[String],
    targets: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut tokens = std::collections::BTreeMap::new();
    for entry in entries {
        let Some((name, token)) = entry.split_once('=') else {
            anyhow::bail!("a webhook token (--notify-webhook-token) is NAME=TOKEN");
        };
        if !targets.contains_key(name) {
            anyhow::bail!("a webhook token names {name:?}, which is no webhook target (--notify-webhook)");
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!("the webhook token of {name} must be printable ASCII without spaces");
        }
        if tokens.insert(name.to_string(), token.to_string()).is_some() {
            anyhow::bail!("webhook target {name} has two tokens");
        }
    }
    Ok(tokens)
}

/// A webhook target as `--print-config` shows it: the query (which may carry a token) redacted.
pub fn printable_webhook(name: &str, url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{name}={base}?{REDACTED}"),
        None => format!("{name}={url}"),
    }
}

/// A size in the TOML file: a number of bytes (`65536`) or a string in the one size grammar
/// (`"64KiB"`, `"10GB"`; see [`meridian_common::size`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(n) => Ok(ByteSize(n)),
            Written::Text(text) => {
                meridian_common::size::parse_size(&text).map(ByteSize).map_err(serde::de::Error::custom)
            }
        }
    }
}

impl FileConfig {
    /// A listener's policy with the limits this file sets.
    pub fn apply_limits(&self, mut policy: meridian_http::Policy) -> meridian_http::Policy {
        if let Some(n) = self.max_connections {
            policy.max_connections = n;
        }
        if let Some(n) = self.max_connections_per_address {
            policy.max_connections_per_address = n;
        }
        if let Some(secs) = self.idle_timeout_secs {
            policy.idle_timeout = std::time::Duration::from_secs(secs);
        }
        if let Some(ms) = self.header_read_timeout_ms {
            policy.header_read_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(secs) = self.drain_deadline_secs {
            policy.drain_deadline = std::time::Duration::from_secs(secs);
        }
        policy
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Access credentials of the admin key.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub enum CredentialSource {
    Environment,
    Stored(PathBuf),
    Generated(PathBuf),
}

/// The admin credentials: from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else from the data
/// directory, else freshly generated and stored there (readable by the owner only).
pub fn admin_credentials(data: &Path) -> anyhow::Result<(Credentials, CredentialSource)> {
    let env_key = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|v| !v.is_empty());
    let env_secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|v| !v.is_empty());
    match (env_key, env_secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok((Credentials { access_key_id, secret_access_key }, CredentialSource::Environment));
        }
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!(
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use stored or generated credentials)"
            )
        }
        (None, None) => {}
    }
    let path = data.join("credentials.toml");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let creds: Credentials =
            toml::from_str(&text).with_context(|| format!("invalid credentials file {}", path.display()))?;
        return Ok((creds, CredentialSource::Stored(path)));
    }
    let creds = Credentials {
        access_key_id: random_string("MK", 18, KEY_CHARS),
        secret_access_key: random_string("", 40, SECRET_CHARS),
    };
    write_private(&path, &toml::to_string(&creds)?)?;
    Ok((creds, CredentialSource::Generated(path)))
}

const KEY_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(prefix: &str, len: usize, alphabet: &[u8]) -> String {
    let mut out = String::from(prefix);
    for _ in 0..len {
        let i = rand::random_range(0..alphabet.len());
        out.push(alphabet[i] as char);
    }
    out
}

/// Creates the data directory (mode 0700) or checks that an existing one, and what lies directly
/// in it, is the owner's alone: it holds every secret (access keys in `meta.redb`, the admin
/// credentials and token) and every byte stored.
pub fn open_data_dir(data: &Path) -> anyhow::Result<()> {
    private_files::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    private_files::check_private_dir(data).context("refusing to start on a data directory open to other users")
}

/// The node's encryption keys: the keyring file (which must be the owner's alone) and/or a
/// master key from the environment (id `env`).
pub fn load_keyring(file: Option<&Path>, env_master: Option<&str>) -> anyhow::Result<meridian_engine::crypt::Keyring> {
    use meridian_engine::crypt::{Key, Keyring};
    let mut ring = Keyring::default();
    if let Some(hex) = env_master.filter(|k| !k.trim().is_empty()) {
        let key = Key::from_hex(hex)
            .context("MERIDIAN_SSE_MASTER_KEY must be 64 hex digits (e.g. from `openssl rand -hex 32`)")?;
        ring = Keyring::with_master("env", key);
    }
    if let Some(path) = file {
        private_files::check_private_file(path).context("refusing a keyring file open to other users")?;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the keyring {}", path.display()))?;
        let parsed = Keyring::parse(&text).with_context(|| format!("in the keyring {}", path.display()))?;
        ring.merge(parsed).with_context(|| format!("in the keyring {}", path.display()))?;
    }
    Ok(ring)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = private_files::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The admin API token: `MERIDIAN_ADMIN_TOKEN`, else the one stored in the data directory, else a
/// new one stored there (mode 0600). The bool says whether it was generated now.
pub fn admin_token(data: &Path) -> anyhow::Result<(String, bool)> {
    if let Some(token) = std::env::var("MERIDIAN_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Ok((token.trim().to_string(), false));
    }
    let path = data.join("admin-token");
    if path.exists() {
        let token = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((token.trim().to_string(), false));
    }
    let token = random_string("mt_", 40, KEY_CHARS);
    write_private(&path, &token)?;
    Ok((token, true))
}

/// This node's id: stored in the data directory, generated at first start.
pub fn node_id(data: &Path) -> anyhow::Result<String> {
    let path = data.join("node-id");
    if path.exists() {
        let id = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(id.trim().to_string());
    }
    let id = random_string("node-", 10, b"abcdefghijklmnopqrstuvwxyz0123456789");
    write_private(&path, &id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_the_file_are_numbers_or_unit_strings() {
        let file: FileConfig =
            toml::from_str("cache_max_bytes = \"10GiB\"\nreplicate_small_bytes = \"64KB\"\ninline_max = 65536\n")
                .unwrap();
        assert_eq!(file.cache_max_bytes, Some(ByteSize(10 << 30)));
        assert_eq!(file.replicate_small_bytes, Some(ByteSize(64_000)));
        assert_eq!(file.inline_max, Some(ByteSize(65_536)));
        let junk = toml::from_str::<FileConfig>("inline_max = \"lots\"").unwrap_err().to_string();
        assert!(junk.contains("invalid size \"lots\""), "{junk}");
    }

    /// The TOML keys named in the node settings table of docs/configuration.md (its second
    /// column).
    fn documented_keys() -> std::collections::BTreeSet<String> {
        let doc = include_str!("../../../docs/configuration.md");
        let table = doc.split("| Flag | TOML key |").nth(1).expect("the settings table");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .filter_map(|row| row.split('|').nth(2))
            .filter_map(|cell| cell.split('`').nth(1))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_config_file_key_is_documented_and_no_other() {
        // Every field of FileConfig, as serde names it (None and empty fields included).
        let fields = serde_json::to_value(FileConfig::default()).unwrap();
        let keys: std::collections::BTreeSet<String> = fields.as_object().unwrap().keys().cloned().collect();
        assert!(keys.len() >= 20, "{keys:?}");
        let documented = documented_keys();
        let missing: Vec<_> = keys.difference(&documented).collect();
        assert!(missing.is_empty(), "keys missing from docs/configuration.md: {missing:?}");
        let unknown: Vec<_> = documented.difference(&keys).collect();
        assert!(unknown.is_empty(), "docs/configuration.md names keys the file does not accept: {unknown:?}");
        for key in &keys {
            let refused = toml::from_str::<FileConfig>(&format!("{key}x = 1")).unwrap_err().to_string();
            assert!(refused.contains("unknown field"), "{refused}");
        }
    }

    #[test]
    fn webhook_targets_are_name_equals_url_and_their_queries_are_redacted() {
        let entries = ["orders=http://127.0.0.1:8080/hook".to_string(), "audit=https://hooks.example/x?token=t".into()];
        let targets = webhooks(&entries).unwrap();
        assert_eq!(targets["orders"], "http://127.0.0.1:8080/hook");
        assert_eq!(printable_webhook("audit", &targets["audit"]), format!("audit=https://hooks.example/x?{REDACTED}"));
        for bad in ["no-url", "bad name=http://h/", "ftp=ftp://h/", "nohost=http:///x", "x=http://h/,x=http://h/"] {
            let entries: Vec<String> = bad.split(',').map(String::from).collect();
            assert!(webhooks(&entries).is_err(), "{bad} was accepted");
        }
        let file: FileConfig = toml::from_str(r#"notify_webhook = ["a=http://h:1/"]"#).unwrap();
        assert_eq!(webhooks(&file.notify_webhook).unwrap().len(), 1);
        let tokens = webhook_tokens(&["orders=t0k3n".to_string()], &targets).unwrap();
        assert_eq!(tokens["orders"], "t0k3n");
        for bad in ["nobody=t", "orders=", "orders=with space", "no-equals"] {
            assert!(webhook_tokens(&[bad.to_string()], &targets).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn sites_are_tables_of_the_file() {
        let text = "web_listen = \"127.0.0.1:0\"\n[[site]]\nname = \"xedn\"\nbucket = \"xedn\"\npath_prefix = \"/file/christine-static\"\n[[site]]\nname = \"www\"\nhost = \"www.example.com\"\nbucket = \"www\"\ncache_control = \"public, max-age=60\"\n";
        let file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.sites.len(), 2);
        assert_eq!(file.sites[0].path_prefix.as_deref(), Some("/file/christine-static"));
        assert_eq!(file.sites[1].host.as_deref(), Some("www.example.com"));
        let typo =
            toml::from_str::<FileConfig>("[[site]]\nname = \"a\"\nbucket = \"b\"\nprefix = \"/x\"\n").unwrap_err();
        assert!(typo.to_string().contains("unknown field `prefix`"), "{typo}");
    }
}
