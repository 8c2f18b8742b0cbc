//! Server configuration: one TOML file, every key optional. `docs/CONFIG.md` documents each key
//! with its default; keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The XMPP domain served (the part after @ in users' addresses).
    pub domain: String,
    /// Folder for every piece of state: database, generated TLS certificate. `--data` overrides it.
    pub data_dir: PathBuf,
    pub c2s: C2sConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub registration: RegistrationConfig,
    /// XEP-0401 invitations (docs/INVITES.md).
    pub invites: InvitesConfig,
    pub components: ComponentsConfig,
    pub ping: PingConfig,
    pub stream_management: StreamManagementConfig,
    pub archive: ArchiveConfig,
    pub pep: PepConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Admission control under overload (docs/OVERLOAD.md).
    pub admission: crate::admission::AdmissionConfig,
    /// XEP-0363 HTTP file upload (docs/UPLOAD.md).
    pub upload: UploadConfig,
    /// XEP-0215 STUN/TURN servers offered to clients (docs/CALLS.md).
    pub external_services: ExternalServicesConfig,
    /// The built-in outage monitor and status page (docs/MONITOR.md).
    pub monitor: crate::monitor_config::MonitorSection,
    /// XEP-0045 multi-user chat service (docs/MUC.md).
    pub muc: MucConfig,
    /// Which database holds accounts, rosters, offline messages and archives (docs/STORAGE.md).
    pub storage: StorageConfig,
    /// Several nodes over NATS sharing one PostgreSQL database (docs/CLUSTER.md).
    pub cluster: ClusterConfig,
    /// Draining before a stop or upgrade: `kabar drain` and SIGTERM (docs/CLUSTER.md).
    pub drain: DrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("kabar-data"),
            c2s: C2sConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            registration: RegistrationConfig::default(),
            invites: InvitesConfig::default(),
            components: ComponentsConfig::default(),
            ping: PingConfig::default(),
            stream_management: StreamManagementConfig::default(),
            archive: ArchiveConfig::default(),
            pep: PepConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            admission: crate::admission::AdmissionConfig::default(),
            upload: UploadConfig::default(),
            external_services: ExternalServicesConfig::default(),
            monitor: crate::monitor_config::MonitorSection::default(),
            muc: MucConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            drain: DrainConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C2sConfig {
    /// Addresses for client connections that start in plain text and upgrade with STARTTLS.
    pub listen: Vec<SocketAddr>,
    /// Addresses for XEP-0368 direct TLS client connections.
    pub direct_tls_listen: Vec<SocketAddr>,
    /// Refuse to authenticate a client that has not started TLS (RFC 6120 §5.3.1). Turn off only
    /// for loopback benchmarks.
    pub require_encryption: bool,
    /// What happens when a client binds a resource that is already in use: "replace" closes the old
    /// session with a <conflict/> stream error (RFC 6120 §7.7.2.2, what most clients expect);
    /// "refuse" fails the new bind with <conflict/>; "random" gives the new session a fresh resource.
    pub resource_conflict: ResourceConflict,
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 5222))],
            direct_tls_listen: vec![SocketAddr::from(([0, 0, 0, 0], 5223))],
            require_encryption: true,
            resource_conflict: ResourceConflict::Replace,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTPS addresses (same certificate as XMPP) serving XMPP over WebSocket (RFC 7395) at
    /// `/xmpp-websocket`, BOSH (XEP-0206) at `/http-bind`, host-meta (XEP-0156), health checks,
    /// Prometheus metrics (`/metrics`) and the admin API (`/admin/api/v1`, see [`AdminConfig`]).
    pub listen: Vec<SocketAddr>,
    /// The address clients use to reach this listener, for XEP-0156 discovery. Default:
    /// `https://<domain>:<port of the first listen address>`.
    pub public_url: Option<String>,
    /// Seconds a BOSH request may be held waiting for data (the client's `wait` is capped to it).
    pub bosh_max_wait_secs: u64,
    /// Seconds a BOSH session lives without any request before it ends.
    pub bosh_inactivity_secs: u64,
    /// Serve the embedded web client (Converse.js, docs/WEBCLIENT.md) at `/`.
    pub web_client: bool,
    /// Worker threads of the HTTPS listener's own runtime (TLS, HTTP, WebSocket/BOSH framing,
    /// status-page report intake), so HTTP floods cannot queue ahead of XMPP sessions on the
    /// main runtime (docs/OVERLOAD.md). 0: serve HTTPS on the main runtime.
    pub listener_threads: usize,
    /// Added to the process's nice value for those threads (Linux only, 0–19), so the kernel
    /// runs XMPP session work first when both want the CPU.
    pub listener_nice: i32,
    /// Linux scheduling policy of those threads: `nice` (SCHED_OTHER at `listener_nice`) or
    /// `idle` (SCHED_IDLE: any woken normal thread preempts them at once; docs/OVERLOAD.md).
    pub listener_sched: ListenerSched,
}

/// Scheduling policy of the HTTPS listener's threads (`[http] listener_sched`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerSched {
    /// SCHED_OTHER with `listener_nice` added.
    #[default]
    Nice,
    /// SCHED_IDLE: runs only when no normal thread of the process wants the core.
    Idle,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 5443))],
            public_url: None,
            bosh_max_wait_secs: 60,
            bosh_inactivity_secs: 60,
            web_client: true,
            listener_threads: 1,
            listener_nice: 10,
            listener_sched: ListenerSched::Nice,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResourceConflict {
    Replace,
    Refuse,
    Random,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. When both `cert` and `key` are unset, kabar generates a private CA and
    /// a certificate for the domain into `<data_dir>/tls/` on first start and reuses them after.
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest stanza accepted, in bytes; a larger one ends the stream with <policy-violation/>.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza.
    pub max_xml_depth: usize,
    /// Seconds a connection may take from TCP accept to a bound resource.
    pub unauthenticated_timeout_secs: u64,
    /// Sustained stanzas per second one session may send; beyond it reading pauses (shaping).
    pub stanzas_per_second: u32,
    /// Stanzas a session may send in a burst above the sustained rate.
    pub stanza_burst: u32,
    /// Most sessions one account may have at once; further binds fail with <resource-constraint/>.
    pub max_sessions_per_account: usize,
    /// Most messages held for one offline user; further ones bounce with <service-unavailable/>.
    pub max_offline_messages: usize,
    /// Failed logins allowed per client IP per minute, before <temporary-auth-failure/>.
    pub auth_failures_per_ip_per_minute: u32,
    /// Failed logins allowed per account name per minute (counted whether or not it exists).
    pub auth_failures_per_account_per_minute: u32,
    /// Outgoing stanzas queued for one session before it is disconnected as too slow.
    pub session_queue: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 256 * 1024,
            max_xml_depth: 32,
            unauthenticated_timeout_secs: 30,
            stanzas_per_second: 100,
            stanza_burst: 500,
            max_sessions_per_account: 20,
            max_offline_messages: 1000,
            auth_failures_per_ip_per_minute: 20,
            auth_failures_per_account_per_minute: 10,
            session_queue: 4096,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Allow XEP-0077 in-band registration of new accounts.
    pub enabled: bool,
    /// Successful registrations allowed per client IP per hour.
    pub per_ip_per_hour: u32,
    /// Usernames nobody may register (compared after normalisation).
    pub reserved_usernames: Vec<String>,
    /// Shortest password accepted at registration and password change.
    pub min_password_length: usize,
    /// Who may register at start (docs/REGISTRATION.md); unset: `open` when `enabled`, else
    /// `invite-only`. The admin API switches it at runtime.
    pub mode: Option<crate::registration::RegistrationMode>,
    /// Leading zero bits the proof-of-work hash must have (1..=32; each bit doubles the work).
    pub pow_difficulty: u8,
    /// Seconds a proof-of-work challenge stays valid.
    pub pow_challenge_ttl_secs: u64,
    /// Most used challenges remembered (to refuse replays) until they expire; beyond it new
    /// proof-of-work registrations wait (`<resource-constraint/>`).
    pub pow_max_remembered: usize,
}

impl RegistrationConfig {
    /// The registration mode the server starts in.
    pub fn initial_mode(&self) -> crate::registration::RegistrationMode {
        use crate::registration::RegistrationMode;
        self.mode.unwrap_or(if self.enabled { RegistrationMode::Open } else { RegistrationMode::InviteOnly })
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            enabled: false,
            per_ip_per_hour: 5,
            reserved_usernames: ["admin", "administrator", "root", "postmaster", "abuse", "support", "security", "webmaster", "hostmaster", "status"]
                .map(String::from)
                .to_vec(),
            min_password_length: 8,
            mode: None,
            pow_difficulty: 16,
            pow_challenge_ttl_secs: 300,
            pow_max_remembered: 100_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvitesConfig {
    /// Let users invite contacts (XEP-0401 ad-hoc commands, the `/invite/` landing page, XEP-0445
    /// pre-authenticated registration and XEP-0379 pre-authenticated subscriptions). Invited
    /// people may register even while `registration.enabled` is false.
    pub enabled: bool,
    /// Seconds an invite created by a user stays valid.
    pub expiry_secs: u64,
    /// Accounts one user invite may create (admins choose their own through the admin API).
    pub max_uses: u32,
    /// Most usable (unexpired, not used up, not revoked) invites one user may hold at once; a
    /// further one is refused with <resource-constraint/>.
    pub max_active_per_user: usize,
    /// Bare JIDs allowed to run the `urn:xmpp:invite#create-account` command (account-only
    /// invites); everyone else uses the admin API or the CLI for those.
    pub admins: Vec<String>,
}

impl Default for InvitesConfig {
    fn default() -> Self {
        InvitesConfig { enabled: true, expiry_secs: 7 * 86_400, max_uses: 1, max_active_per_user: 10, admins: Vec::new() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentsConfig {
    /// Addresses for XEP-0114 external components. Keep these on loopback or a private network.
    pub listen: Vec<SocketAddr>,
    /// Components allowed to connect: each its domain and shared secret.
    pub component: Vec<ComponentEntry>,
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig { listen: vec![SocketAddr::from(([127, 0, 0, 1], 5347))], component: Vec::new() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentEntry {
    pub domain: String,
    pub secret: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PingConfig {
    /// Seconds of silence from a client before the server pings it (XEP-0199).
    pub idle_secs: u64,
    /// Seconds to wait for any data after that ping before closing the connection as dead.
    pub timeout_secs: u64,
}

impl Default for PingConfig {
    fn default() -> Self {
        PingConfig { idle_secs: 240, timeout_secs: 60 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamManagementConfig {
    /// Seconds a session whose connection broke is kept for XEP-0198 resumption (0: no
    /// resumption). Messages it could not deliver are rerouted (offline storage) when it expires.
    pub resume_timeout_secs: u64,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig { resume_timeout_secs: 300 }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Delete archived messages (XEP-0313) older than this many days; 0 keeps them forever.
    /// Checked at start and then hourly.
    pub retention_days: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin HTTP API (`/admin/api/v1`, bearer token) on the HTTPS listener.
    pub enabled: bool,
    /// File holding the admin API's bearer token. Default: `<data_dir>/admin-token`. When the file
    /// does not exist, a random token is written to it (mode 0600) at start.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, token_file: None }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in tracing's env-filter syntax; `RUST_LOG` overrides it.
    pub level: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), json: false }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PepConfig {
    /// Items a PEP node keeps when neither its configuration nor the publish-options name
    /// `pubsub#max_items` (XEP-0163 / XEP-0060 §16.4.4).
    pub default_max_items: usize,
    /// Most items any one node may keep; a larger `pubsub#max_items` (or "max") is capped to it.
    pub max_items_cap: usize,
    /// Most PEP nodes one account may have; creating more fails with <not-acceptable/>.
    pub max_nodes: usize,
    /// Largest item payload accepted, serialised, in bytes (avatars included).
    pub max_item_bytes: usize,
    /// XEP-0115 capability hashes remembered (ver → +notify interests).
    pub caps_cache: usize,
}

impl Default for PepConfig {
    fn default() -> Self {
        PepConfig { default_max_items: 1, max_items_cap: 256, max_nodes: 1000, max_item_bytes: 192 * 1024, caps_cache: 10_000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Hand out XEP-0363 upload slots and serve `/upload/` on the HTTPS listener (needs
    /// `[http] listen`).
    pub enabled: bool,
    /// Folder for uploaded files. Default: `<data_dir>/uploads`.
    pub dir: Option<PathBuf>,
    /// Largest file accepted, in bytes; larger slot requests get `<file-too-large/>`.
    pub max_file_size: u64,
    /// Bytes one account may have stored at once (0: no limit).
    pub quota_bytes: u64,
    /// Seconds an uploaded file is kept before the sweep deletes it (0: kept until deleted by an
    /// administrator or with the account).
    pub expire_after_secs: u64,
    /// Seconds between sweeps for expired files.
    pub sweep_interval_secs: u64,
    /// Seconds a slot's PUT URL stays valid.
    pub slot_lifetime_secs: u64,
    /// Base URL of the HTTPS listener as clients reach it, for slot URLs. Default:
    /// `[http] public_url`, else `https://<domain>:<port of the first listen address>`.
    pub url: Option<String>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            dir: None,
            max_file_size: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            expire_after_secs: 30 * 86_400,
            sweep_interval_secs: 3600,
            slot_lifetime_secs: 300,
            url: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalServicesConfig {
    /// TURN REST API shared secret (coturn's `static-auth-secret`): when set, `turn`/`turns`
    /// services come with time-limited credentials.
    pub secret: Option<String>,
    /// File holding that secret instead (first line), so it can stay out of the config file.
    pub secret_file: Option<PathBuf>,
    /// Seconds the generated TURN credentials stay valid.
    pub credentials_ttl_secs: u64,
    /// The STUN/TURN servers offered to clients.
    pub service: Vec<ExternalService>,
}

impl Default for ExternalServicesConfig {
    fn default() -> Self {
        ExternalServicesConfig { secret: None, secret_file: None, credentials_ttl_secs: 86_400, service: Vec::new() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    pub host: String,
    /// Default: 3478 (stun/turn) or 5349 (stuns/turns).
    pub port: Option<u16>,
    /// `stun`, `turn`, `stuns` or `turns`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `udp` or `tcp`; unset: not advertised (the client picks).
    pub transport: Option<String>,
    /// Human-readable name (XEP-0215 `name`).
    pub name: Option<String>,
    /// Give this service TURN REST credentials (default: true for turn/turns when a secret is set).
    pub credentials: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MucConfig {
    /// Run the XEP-0045 multi-user chat service.
    pub enabled: bool,
    /// The service's domain. Default: `conference.<domain>`.
    pub domain: Option<String>,
    /// Most rooms one account may own (created or been made owner of); creating more fails with
    /// <not-allowed/>. Service admins are not limited.
    pub max_rooms_per_user: usize,
    /// Most occupants any room may hold (the ceiling for `muc#roomconfig_maxusers`).
    pub max_occupants: usize,
    /// `muc#roomconfig_maxusers` of a new room (a new channel gets `max_occupants`).
    pub default_max_occupants: usize,
    /// Messages each room keeps in memory for history on join (XEP-0045 §7.2.15); a persistent
    /// room refills it from its archive after a restart.
    pub history_size: usize,
    /// Bare JIDs allowed to create rooms; empty: every local account.
    pub creators: Vec<String>,
    /// Bare JIDs that are owners of every room (and may always create rooms).
    pub admins: Vec<String>,
    /// Configuration of a new room (until its owner changes it).
    pub default_persistent: bool,
    pub default_public: bool,
    pub default_members_only: bool,
    pub default_moderated: bool,
    /// `true`: everyone sees occupants' real JIDs (non-anonymous); `false`: only moderators do.
    pub default_nonanonymous: bool,
    /// Keep a XEP-0313 archive of the room's messages.
    pub default_archive: bool,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            domain: None,
            max_rooms_per_user: 100,
            max_occupants: 100_000,
            default_max_occupants: 1000,
            history_size: 20,
            creators: Vec::new(),
            admins: Vec::new(),
            default_persistent: false,
            default_public: true,
            default_members_only: false,
            default_moderated: false,
            default_nonanonymous: false,
            default_archive: true,
        }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }
}

/// The storage backend (docs/STORAGE.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded store: one SQLite file, `<data_dir>/kabar.db`.
    #[default]
    Sqlite,
    /// A PostgreSQL (or compatible) server named by `url`; what several nodes share.
    Postgres,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// For `postgres`: `postgres://user:password@host:port/dbname` (or libpq's key=value form).
    /// The `KABAR_STORAGE_URL` environment variable overrides it, to keep the password out of
    /// the file.
    pub url: Option<String>,
    /// For `postgres`: most connections this node opens.
    pub pool_size: usize,
    /// For `postgres`: schema holding kabar's tables (created when missing); default: the
    /// server's `search_path` (normally `public`).
    pub schema: Option<String>,
    /// For `postgres`: seconds opening a connection, or waiting for a free one, may take.
    pub connect_timeout_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sqlite,
            url: None,
            pool_size: 16,
            schema: None,
            connect_timeout_secs: 10,
        }
    }
}

/// `[cluster]`: this node's part in a cluster (docs/CLUSTER.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// NATS server(s), comma-separated (`nats://user:password@host:4222`). The `KABAR_NATS_URL`
    /// environment variable overrides it.
    pub nats_url: String,
    /// This node's name, unique in the cluster; letters, digits, `-` and `_` (it is a NATS subject
    /// token). Default: the host name plus a random suffix, so a restarted node is a new node.
    pub node: Option<String>,
    /// Seconds between this node's heartbeats (each carries the snapshot of its sessions).
    pub heartbeat_secs: u64,
    /// Seconds after a node's last heartbeat before the others forget its sessions.
    pub lease_secs: u64,
    /// Milliseconds a node waits for another to confirm it took a stanza before rerouting it
    /// (another session, or offline storage).
    pub delivery_timeout_ms: u64,
    /// `host:port` clients use to reach this node's c2s listener, told to clients of a draining
    /// node in `<see-other-host/>` (RFC 6120 §4.9.3.19). Unset: this node is never a redirect target.
    pub public_address: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            nats_url: "nats://127.0.0.1:4222".into(),
            node: None,
            heartbeat_secs: 2,
            lease_secs: 10,
            delivery_timeout_ms: 3000,
            public_address: None,
        }
    }
}

/// `[drain]`: how a node empties itself before it stops (docs/CLUSTER.md, "Rolling restart").
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// SIGTERM drains (refuse new streams, move clients, then exit) instead of stopping at once.
    pub on_sigterm: bool,
    /// Longest wait for the node's sessions to leave before it exits anyway.
    pub timeout_secs: u64,
    /// Sessions asked to leave per second (0: all at once), so the other nodes are not hit by every
    /// reconnection in the same instant.
    pub sessions_per_sec: u64,
    /// Seconds the emptied node keeps answering new streams with `<see-other-host/>` before it exits,
    /// so a load balancer's health check (`/readyz` answers 503 while draining) can take it out first.
    pub linger_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { on_sigterm: true, timeout_secs: 30, sessions_per_sec: 2000, linger_secs: 0 }
    }
}
