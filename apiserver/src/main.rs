//! `berth-apiserver`: berth's minimal Kubernetes API server.
//!
//! ```text
//! berth-apiserver --data-dir DIR [--listen 127.0.0.1:6443] [--storage sqlite|etcd]
//!                 [--etcd-servers http://127.0.0.1:2379]
//!                 [--audit-log-path FILE|-]
//!                 [--encryption-provider-config FILE]
//!                 [--metric-resolution 15s]
//! berth-apiserver kubeconfig --data-dir DIR (--node NAME | --user NAME [--group G]...)
//!                 [--client-cert] [--server URL]
//! ```
//!
//! On first start it writes `DIR/tokens.csv` (an admin token),
//! `DIR/admin.kubeconfig` (pointed at the listen address again on every
//! start, and the default `--server` of `kubeconfig`), and under `DIR/pki/` the CA, the serving
//! certificate and the client certificate for node agents
//! (`apiserver-kubelet-client.crt`, unless `--kubelet-client-certificate`
//! and `--kubelet-client-key` name others).
//! The directory is kept 0700 and its secret files 0600 whatever the umask;
//! `--encryption-provider-config` encrypts the resources it names (Secrets)
//! at rest, as kube-apiserver does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use berth_apiserver::api::tls::{self, PkiPaths};
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::etcd::EtcdStorage;
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Sqlite,
    Etcd,
}

#[derive(Debug, Parser)]
#[command(
    name = "berth-apiserver",
    about = "berth's minimal Kubernetes API server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the database, tokens and kubeconfig live.
    #[arg(long, env = "BERTH_APISERVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (HTTPS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Addresses clients reach this server at, added to the serving
    /// certificate on first start (with the listen address, 127.0.0.1, ::1,
    /// localhost and the hostname). Comma-separated.
    #[arg(long, value_delimiter = ',')]
    advertise_address: Vec<std::net::IpAddr>,
    /// Storage backend.
    #[arg(long, value_enum, default_value = "sqlite")]
    storage: Backend,
    /// etcd endpoints (comma-separated) for `--storage etcd`.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Serve without authentication (tests and development only).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Client certificate presented to node agents (pods/log, pods/exec);
    /// default DIR/pki/apiserver-kubelet-client.crt, generated on first start.
    #[arg(long, requires = "kubelet_client_key")]
    kubelet_client_certificate: Option<PathBuf>,
    /// The key of --kubelet-client-certificate.
    #[arg(long, requires = "kubelet_client_certificate")]
    kubelet_client_key: Option<PathBuf>,
    /// How long a node may go without renewing its Lease or posting status
    /// before it is marked `Ready=Unknown` and tainted unreachable
    /// (kube-controller-manager's flag of the same name).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// SQLite: keep at least this many recent changes for watches to resume
    /// from; older ones are compacted (a watch from before gets 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    sqlite_history_events: i64,
    /// SQLite: and keep at least this much recent history.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    sqlite_history_age: std::time::Duration,
    /// SQLite: how often to compact history beyond both limits (the analogue
    /// of kube-apiserver's --etcd-compaction-interval; with etcd, etcd's own
    /// --auto-compaction-* settings decide).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    sqlite_compaction_interval: std::time::Duration,
    /// An `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`, YAML or
    /// JSON) saying which resources are encrypted at rest and with which keys
    /// (providers aesgcm, secretbox, identity). kube-apiserver's flag of the
    /// same name.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Write an audit log (`audit.k8s.io/v1` Events, JSON lines, level
    /// Metadata) to this file (created 0600, appended to); `-` is standard
    /// output. kube-apiserver's flag of the same name.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// How often node agents' `/metrics/resource` is scraped for
    /// `metrics.k8s.io` (`kubectl top`): metrics-server's flag of the same
    /// name (its manifests use 15s). Each node gets 9/10 of it, at most 10s.
    #[arg(long, default_value = "15s", value_parser = parse_metric_resolution)]
    metric_resolution: std::time::Duration,
}

/// `--metric-resolution`: a duration of at least 100ms (metrics-server asks
/// for 10s; shorter ones serve tests).
fn parse_metric_resolution(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < api::metrics::scraper::MIN_RESOLUTION {
        return Err(format!("must be at least 100ms, got {s}"));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a kubeconfig for node NAME (user `system:node:NAME`, group
    /// `system:nodes`) or for any user (`--user NAME [--group G]...`): with a
    /// bearer token added to DIR/tokens.csv, or with `--client-cert` a client
    /// certificate (subject CN=user, O=each group) signed by the cluster CA
    /// in DIR/pki, valid for one year.
    #[command(group(ArgGroup::new("identity").required(true).args(["node", "user"])))]
    Kubeconfig {
        /// The data directory of the server.
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's name (a DNS-1123 subdomain).
        #[arg(long)]
        node: Option<String>,
        /// A user name (`system:kube-scheduler`, `alice`).
        #[arg(long)]
        user: Option<String>,
        /// A group of --user (repeatable).
        #[arg(long = "group", requires = "user", conflicts_with = "node")]
        groups: Vec<String>,
        /// Authenticate with a client certificate instead of a token.
        #[arg(long)]
        client_cert: bool,
        /// The server URL written into the kubeconfig; by default the one
        /// the server in DIR serves, as its DIR/admin.kubeconfig says.
        #[arg(long)]
        server: Option<String>,
    },
}

fn random_token() -> String {
    hex::encode(api::objects::random_bytes(32))
}

/// Append a token line to DIR/tokens.csv (mode 0600); the token.
fn add_token(dir: &Path, user: &str, groups: &str) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = random_token();
    let uid = api::objects::new_uid();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("tokens.csv"))
        .context("opening tokens.csv")?;
    let line = [token.as_str(), user, uid.as_str(), groups]
        .iter()
        .map(|field| csv_field(field))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(",");
    writeln!(f, "{line}").context("writing tokens.csv")?;
    Ok(token)
}

/// One field of tokens.csv, quoted as the file's reader (and kube-apiserver's
/// `--token-auth-file`) expects: in double quotes, a quote doubled. A line
/// break cannot be written (the file is read a line at a time).
fn csv_field(field: &str) -> anyhow::Result<String> {
    if field.contains(['\n', '\r']) {
        anyhow::bail!("tokens.csv: a field may not contain a line break: {field:?}");
    }
    if field.contains([',', '"']) {
        Ok(format!("\"{}\"", field.replace('"', "\"\"")))
    } else {
        Ok(field.to_string())
    }
}

/// How a kubeconfig's user authenticates.
enum Credential {
    /// A bearer token.
    Token(String),
    /// A client certificate and key.
    Certificate(tls::ClientCertificate),
}

fn kubeconfig(server: &str, ca_pem: &str, user: &str, credential: &Credential) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = b64(ca_pem);
    // User names may hold any printable character (`: `, `#`, quotes): such
    // a name is written as a JSON string, a double-quoted YAML scalar that
    // reads back unchanged; plain names (`system:node:n1`) stay plain.
    let plain = user.starts_with(|c: char| c.is_ascii_alphanumeric())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c));
    let name = if plain {
        user.to_string()
    } else {
        serde_json::Value::from(user).to_string()
    };
    let credential = match credential {
        Credential::Token(token) => format!("    token: {token}"),
        Credential::Certificate(c) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}",
            b64(&c.cert_pem),
            b64(&c.key_pem)
        ),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
{credential}
contexts:
- name: berth
  context:
    cluster: berth
    user: {name}
    namespace: default
current-context: berth
"
    )
}

/// A user name for tokens.csv or a certificate subject: not empty, no
/// control characters (tokens.csv is read a line at a time; a certificate
/// subject should print). Commas and quotes are fine: tokens.csv quotes them.
fn user_name_errors(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// A group name: as a user name, and no comma (tokens.csv lists a user's
/// groups comma-separated in one field) nor surrounding spaces (trimmed
/// when read back).
fn group_name_errors(name: &str) -> Option<&'static str> {
    if let Some(e) = user_name_errors(name) {
        Some(e)
    } else if name.contains(',') {
        Some("must not contain a comma")
    } else if name.trim() != name {
        Some("must not begin or end with whitespace")
    } else {
        None
    }
}

/// `berth-apiserver kubeconfig`: the kubeconfig of a node or a user.
fn kubeconfig_command(
    data_dir: &Path,
    node: Option<&str>,
    user: Option<&str>,
    groups: &[String],
    client_cert: bool,
    server: Option<&str>,
) -> anyhow::Result<String> {
    let (user, groups) = match (node, user) {
        (Some(node), None) => {
            if !groups.is_empty() {
                bail!("kubeconfig: --group goes with --user; a node's group is system:nodes");
            }
            // The name becomes the user `system:node:NAME`: only a DNS-1123
            // subdomain, as a Node's name must be.
            let problems = berth_api::names::dns1123_subdomain_errors(node);
            if !problems.is_empty() {
                bail!(
                    "kubeconfig: --node {node:?} is not a valid node name: {}",
                    problems.join("; ")
                );
            }
            (
                format!("system:node:{node}"),
                vec!["system:nodes".to_string()],
            )
        }
        (None, Some(user)) => {
            if let Some(why) = user_name_errors(user) {
                bail!("kubeconfig: --user {user:?}: the user name {why}");
            }
            for g in groups {
                if let Some(why) = group_name_errors(g) {
                    bail!("kubeconfig: --group {g:?}: the group name {why}");
                }
            }
            (user.to_string(), groups.to_vec())
        }
        // clap's `identity` group allows exactly one.
        _ => bail!("kubeconfig: give exactly one of --node and --user"),
    };
    let server = match server {
        Some(server) => server.to_string(),
        None => {
            let admin = data_dir.join("admin.kubeconfig");
            KubeconfigFile::read(&admin)
                .context(
                    "finding the server's address (start the server once first, or pass --server)",
                )?
                .server()
                .with_context(|| format!("{} names no server; pass --server", admin.display()))?
                .to_string()
        }
    };
    let pki = PkiPaths::new(data_dir);
    let ca = std::fs::read_to_string(&pki.ca_cert).with_context(|| {
        format!(
            "reading {} (start the server once first)",
            pki.ca_cert.display()
        )
    })?;
    let credential = if client_cert {
        Credential::Certificate(
            tls::issue_client_certificate(&pki, &user, &groups, CLIENT_CERT_VALIDITY)
                .context("issuing the client certificate")?,
        )
    } else {
        Credential::Token(add_token(data_dir, &user, &groups.join(","))?)
    };
    Ok(kubeconfig(&server, &ca, &user, &credential))
}

/// How long a certificate from `kubeconfig --client-cert` is valid (as
/// kubeadm's client certificates: one year).
const CLIENT_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The fields of a kubeconfig this program reads back: the server URL of its
/// first cluster and the token of its first user.
#[derive(Debug, Default, serde::Deserialize)]
struct KubeconfigFile {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Debug, serde::Deserialize)]
struct NamedCluster {
    cluster: ClusterEntry,
}

#[derive(Debug, serde::Deserialize)]
struct ClusterEntry {
    server: String,
}

#[derive(Debug, serde::Deserialize)]
struct NamedUser {
    user: UserEntry,
}

#[derive(Debug, serde::Deserialize)]
struct UserEntry {
    token: Option<String>,
}

impl KubeconfigFile {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn server(&self) -> Option<&str> {
        self.clusters.first().map(|c| c.cluster.server.as_str())
    }

    fn token(&self) -> Option<&str> {
        self.users.first().and_then(|u| u.user.token.as_deref())
    }
}

/// The URL clients reach a server listening on `listen` at: the listen
/// address itself, or 127.0.0.1 for a wildcard.
fn server_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

/// Write DIR/admin.kubeconfig with a new admin token on first start; on a
/// later start under another `--listen`, point the existing one (same
/// token) at the new address, so the kubeconfig and `kubeconfig --node`
/// (which takes its default server from this file) name what is served.
fn ensure_admin_kubeconfig(
    dir: &Path,
    tokens: &Path,
    listen: SocketAddr,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let path = dir.join("admin.kubeconfig");
    let server = server_url(listen);
    if tokens.exists() && path.exists() {
        // A file someone edited into something unreadable is left alone: the
        // server still starts (as before this file was read back).
        let existing = match KubeconfigFile::read(&path) {
            Ok(existing) => existing,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = format!("{e:#}"), "admin kubeconfig not updated to the listen address");
                return Ok(());
            }
        };
        if existing.server() == Some(server.as_str()) {
            return Ok(());
        }
        if let Some(token) = existing.token() {
            write_private(
                &path,
                &kubeconfig(
                    &server,
                    ca_pem,
                    "admin",
                    &Credential::Token(token.to_string()),
                ),
            )?;
            tracing::info!(path = %path.display(), server = %server, was = ?existing.server(), "admin kubeconfig now names the listen address");
            return Ok(());
        }
        // No token to keep: a new admin token below.
    }
    let token = add_token(dir, "admin", "system:masters")?;
    write_private(
        &path,
        &kubeconfig(&server, ca_pem, "admin", &Credential::Token(token)),
    )?;
    tracing::info!(path = %path.display(), server = %server, "wrote admin kubeconfig");
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Kubeconfig {
        data_dir,
        node,
        user,
        groups,
        client_cert,
        server,
    }) = &cli.command
    {
        print!(
            "{}",
            kubeconfig_command(
                data_dir,
                node.as_deref(),
                user.as_deref(),
                groups,
                *client_cert,
                server.as_deref(),
            )?
        );
        return Ok(());
    }
    let Some(dir) = cli.data_dir.clone() else {
        bail!("--data-dir is required");
    };
    // Every Secret is in here: the directory 0700 and its secret files 0600
    // whatever the umask (an open one is narrowed, with a warning).
    berth_apiserver::storage::private_files::secure_data_dir(&dir)?;
    // A bad encryption configuration stops start-up before anything is written.
    let encryption = cli
        .encryption_provider_config
        .as_deref()
        .map(berth_apiserver::storage::encryption::load_config)
        .transpose()?;
    let pki = PkiPaths::new(&dir);
    // The serving certificate names the listen address (unless it is a
    // wildcard) and every --advertise-address, so clients on other hosts can
    // verify it; it is generated once, on first start.
    let mut sans: Vec<String> = cli
        .advertise_address
        .iter()
        .map(ToString::to_string)
        .collect();
    if !cli.listen.ip().is_unspecified() {
        sans.push(cli.listen.ip().to_string());
    }
    tls::ensure_pki(&pki, &sans).context("generating certificates")?;
    let (kubelet_cert, kubelet_key) =
        match (&cli.kubelet_client_certificate, &cli.kubelet_client_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                tls::ensure_kubelet_client_cert(&pki)
                    .context("generating the kubelet client certificate")?;
                (
                    pki.kubelet_client_cert.clone(),
                    pki.kubelet_client_key.clone(),
                )
            }
        };
    let kubelet = api::proxy::KubeletClient::from_pem_files(&kubelet_cert, &kubelet_key)
        .context("loading the kubelet client certificate")?;
    let tls_config = tls::server_config(&pki).context("loading certificates")?;
    let ca_pem = std::fs::read_to_string(&pki.ca_cert)?;
    let tokens = dir.join("tokens.csv");
    ensure_admin_kubeconfig(&dir, &tokens, cli.listen, &ca_pem)?;
    let audit = match &cli.audit_log_path {
        Some(path) => Some(api::audit::AuditLog::open(path)?),
        None => None,
    };
    let authenticator = if cli.insecure_no_auth {
        tracing::warn!("authentication disabled (--insecure-no-auth)");
        None
    } else {
        Some(Authenticator::load(&tokens).map_err(anyhow::Error::msg)?)
    };
    let storage: Arc<dyn Storage> = match cli.storage {
        Backend::Sqlite => Arc::new(SqliteStorage::open(
            &dir,
            SqliteOptions {
                retain_events: cli.sqlite_history_events,
                retain_age: cli.sqlite_history_age,
                compaction_interval: cli.sqlite_compaction_interval,
                ..SqliteOptions::default()
            },
        )?),
        Backend::Etcd => Arc::new(EtcdStorage::connect(&cli.etcd_servers, "").await?),
    };
    let storage = match &encryption {
        Some(config) => {
            let served: Vec<(&str, &str)> = api::resources::RESOURCES
                .iter()
                .map(|r| (r.group, r.name))
                .collect();
            berth_apiserver::storage::encryption::wrap(storage, config, &served)?
        }
        None => storage,
    };
    let state = ApiState::with_kubelet_client(
        storage,
        ApiConfig {
            authenticator,
            audit,
            ..ApiConfig::default()
        },
        Some(kubelet),
    );
    state
        .bootstrap()
        .await
        .context("creating system namespaces and the RBAC bootstrap policy")?;
    state.clone().spawn_reaper();
    berth_apiserver::controllers::node_lifecycle::spawn(
        state.clone(),
        berth_apiserver::controllers::node_lifecycle::NodeLifecycleConfig {
            grace_period: cli.node_monitor_grace_period,
            ..Default::default()
        },
    );
    berth_apiserver::controllers::clusterrole_aggregation::spawn(state.clone(), Default::default());
    api::metrics::spawn(
        state.clone(),
        api::metrics::ScraperConfig::new(cli.metric_resolution),
    );
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(listen = %cli.listen, storage = ?cli.storage, "berth-apiserver serving");
    tls::serve(listener, api::router(state), tls_config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
