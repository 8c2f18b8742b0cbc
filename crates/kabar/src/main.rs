//! The `kabar` binary: command line, configuration, wiring of store, modules and listeners.
//! The only crate that names concrete backends.

mod admin_client;
mod auth;
mod c2s;
mod http;
mod import;
mod monitor;
mod probes;
mod component;
mod drain;
mod session;
mod storage;
mod stream;
mod tls;
mod webhooks;

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kabar_core::accounts::{self, AccountError};
use kabar_core::sessions::LocalSessions;
use jid::BareJid;
use kabar_core::{Config, Server};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "kabar", version, about = "kabar: an XMPP server that stays up", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (TOML). Default: ./kabar.toml if it exists, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder (database, generated TLS certificate). Overrides `data_dir` from the config.
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (c2s on 5222 STARTTLS and 5223 direct TLS by default).
    Serve(#[command(flatten)] Common),
    /// Manage accounts; works whether the server is running or not.
    #[command(subcommand)]
    User(UserCommand),
    /// Bring chat history from elsewhere into a user's archive.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Invitations (XEP-0401, docs/INVITES.md); work whether the server is running or not.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Drain the running server before a stop or upgrade (docs/CLUSTER.md): it refuses new
    /// streams, sends its clients to other cluster nodes (<see-other-host/>) or closes them with
    /// <system-shutdown/>, waits for them to leave, then exits. Goes through the admin API.
    Drain {
        /// Longest wait for the sessions to leave, in seconds (default: `[drain] timeout_secs`).
        #[arg(long)]
        timeout: Option<u64>,
        /// Seconds to keep redirecting new streams once empty (default: `[drain] linger_secs`).
        #[arg(long)]
        linger: Option<u64>,
        /// Return once the drain has started instead of following it until the node exits.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Create an invite and print its link: `kabar invite create --inviter alice@localhost`, or an
    /// account-only invite without --inviter.
    Create {
        /// Who invites (NAME or NAME@DOMAIN); the new account and the inviter become contacts.
        #[arg(long)]
        inviter: Option<String>,
        /// The username the new account must take.
        #[arg(long)]
        username: Option<String>,
        /// Accounts the invite may create (default: `[invites] max_uses`).
        #[arg(long)]
        uses: Option<u32>,
        /// Seconds it stays valid (default: `[invites] expiry_secs`).
        #[arg(long)]
        expires_in: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// List invites (id, inviter, uses, state).
    List(#[command(flatten)] Common),
    /// Revoke an invite by its id (from `kabar invite list`).
    Revoke {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import a WhatsApp "Export chat" file (.txt or .zip, Android or iOS) into USER's archive as
    /// the conversation with WITH. Importing the same export again adds nothing.
    Whatsapp {
        /// The kabar account whose archive receives the history (NAME or NAME@DOMAIN).
        #[arg(long)]
        user: String,
        /// The address the chat partner has (or will have) here, e.g. bob@localhost.
        #[arg(long)]
        with: String,
        /// Your own name as it appears in the export (the command lists the senders if left out).
        #[arg(long)]
        me: Option<String>,
        /// The exporting phone's UTC offset, e.g. +07:00 (exports carry no time zone).
        #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
        utc_offset: String,
        /// Date order when the export does not settle it: dmy, mdy or ymd.
        #[arg(long)]
        date_order: Option<String>,
        /// The exported .txt or .zip file.
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account: `kabar user add alice@localhost` (or just `alice`).
    Add {
        /// The account: NAME or NAME@DOMAIN (DOMAIN must be the configured domain).
        jid: String,
        /// The password; when left out it is prompted for, or read from standard input.
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete an account and everything stored for it.
    Remove {
        /// The account: NAME or NAME@DOMAIN.
        jid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Set a new password.
    Passwd {
        /// The account: NAME or NAME@DOMAIN.
        jid: String,
        /// The new password; when left out it is prompted for, or read from standard input.
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// List all accounts.
    List(#[command(flatten)] Common),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(common) => serve(common).await,
        Command::Drain { timeout, linger, no_wait, common } => drain::cli(&load_config(&common)?, timeout, linger, !no_wait).await,
        Command::User(cmd) => user(cmd).await,
        Command::Invite(cmd) => invite(cmd).await,
        Command::Import(ImportCommand::Whatsapp { user, with, me, utc_offset, date_order, file, common }) => {
            let config = load_config(&common)?;
            let store = storage::open_store(&config).await?;
            let owner = accounts::parse_account(&user, &config.domain)?;
            let peer = BareJid::new(&with).map_err(|_| anyhow::anyhow!("'{with}' is not a valid address"))?;
            let date_order = match date_order.as_deref() {
                None => None,
                Some("dmy") => Some(kabar_import::DateOrder::DayFirst),
                Some("mdy") => Some(kabar_import::DateOrder::MonthFirst),
                Some("ymd") => Some(kabar_import::DateOrder::YearFirst),
                Some(other) => bail!("--date-order must be dmy, mdy or ymd, not '{other}'"),
            };
            let job = import::WhatsappImport {
                store: &store,
                owner,
                peer,
                file: &file,
                me,
                utc_offset_minutes: import::parse_utc_offset(&utc_offset)?,
                date_order,
            };
            let s = job.run().await?;
            println!(
                "imported {} messages, {} already present, {} system lines skipped, {} malformed lines (listed above)",
                s.imported, s.already_present, s.system_lines, s.malformed
            );
            Ok(())
        }
    }
}

fn load_config(common: &Common) -> Result<Config> {
    let path = match &common.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("kabar.toml")).filter(|p| p.exists()),
    };
    let mut config = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("config file {} is not valid (see docs/CONFIG.md)", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(dir) = &common.data {
        config.data_dir = dir.clone();
    }
    config.domain = config.domain.trim().to_ascii_lowercase();
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn bind_all(addrs: &[SocketAddr], what: &str) -> Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for {what} on {addr}: is another server using it? Change it in the config file")
        })?;
        out.push(l);
    }
    Ok(out)
}

async fn serve(common: Common) -> Result<()> {
    let config = load_config(&common)?;
    init_logging(&config);
    let store = storage::open_store(&config).await?;
    let tls = Arc::new(tls::Tls::load(&config, &config.data_dir)?);
    let config = Arc::new(config);
    // Clustering (docs/CLUSTER.md): the cluster directory replaces the local one; checked before
    // anything listens, so a misconfigured node refuses to start.
    let cluster = if config.cluster.enabled { Some(kabar_cluster::ClusterDirectory::new(&config)?) } else { None };
    let sessions: kabar_core::sessions::SharedDirectory = match &cluster {
        Some(dir) => dir.clone(),
        None => Arc::new(LocalSessions::new()),
    };
    let mut builder = Server::builder(config.clone(), store, sessions);
    for m in kabar_modules::default_modules(&config) {
        builder = builder.module(m);
    }
    let server = builder.build().map_err(anyhow::Error::msg)?;
    if let Some(dir) = &cluster {
        dir.start(&server).await?;
    }
    // Rolling restart (docs/CLUSTER.md): where a drain sends this node's clients.
    let redirects = match &cluster {
        Some(dir) => {
            if let Some(a) = config.cluster.public_address.as_deref().filter(|a| !kabar_cluster::drain::valid_address(a.trim())) {
                bail!("[cluster] public_address = {a:?} is not host:port (what clients of a draining node are told to connect to)");
            }
            Some(kabar_cluster::drain::Redirects::start(dir.clone(), config.cluster.public_address.clone()).await?)
        }
        None => None,
    };
    let drain = drain::Drain::new(&config.drain, cluster.clone(), redirects);

    let starttls = bind_all(&config.c2s.listen, "client connections (STARTTLS)").await?;
    let direct = bind_all(&config.c2s.direct_tls_listen, "client connections (direct TLS)").await?;
    let https = bind_all(&config.http.listen, "HTTPS (WebSocket, BOSH)").await?;
    // Before anything accepts: the token file exists once the server answers.
    let admin = http::admin::AdminAuth::load(&config)?;
    let components = if config.components.component.is_empty() {
        Vec::new()
    } else {
        bind_all(&config.components.listen, "external components").await?
    };
    let c2s = Arc::new(c2s::C2s { server: server.clone(), tls: tls.clone(), resumable: Default::default(), drain: drain.clone(), caps_feature: Default::default() });
    let mut tasks = tokio::task::JoinSet::new();
    for l in starttls {
        tasks.spawn(accept_c2s(l, c2s.clone(), false));
    }
    for l in direct {
        tasks.spawn(accept_c2s(l, c2s.clone(), true));
    }
    for l in components {
        tasks.spawn(accept_components(l, server.clone()));
    }
    let mut http_state = http::HttpState::new(c2s.clone());
    http_state.admin = admin;
    for l in https {
        tasks.spawn(http::serve(l, http_state.clone(), tls.clone()));
    }
    // Overload signals for admission control (docs/OVERLOAD.md).
    tasks.spawn(kabar_core::admission::run_sampler(Arc::downgrade(&server)));
    tasks.spawn(http::upload::sweeper(server.clone()));
    // Outage monitor: probes, minute ticks, alerts (docs/MONITOR.md); returns at once when off.
    tasks.spawn(monitor::run(server.clone(), tls.ca_path.clone()));
    if config.archive.retention_days > 0 {
        tasks.spawn(archive_retention(server.clone(), Duration::from_secs(config.archive.retention_days * 86_400)));
    }
    let list = |a: &[SocketAddr]| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    info!(
        "kabar listening for {}: c2s STARTTLS on {} | direct TLS on {} | HTTPS (WebSocket, BOSH) on {}{} | data in {} | add users with `kabar user add NAME@{}`, then log in with any XMPP client{}",
        config.domain,
        list(&config.c2s.listen),
        list(&config.c2s.direct_tls_listen),
        list(&config.http.listen),
        if config.components.component.is_empty() { String::new() } else { format!(" | components on {}", list(&config.components.listen)) },
        config.data_dir.display(),
        config.domain,
        tls.ca_path.as_ref().map(|p| format!(" (trust the private CA {})", p.display())).unwrap_or_default(),
    );
    // SIGTERM or `kabar drain`: move the clients away first (docs/CLUSTER.md).
    drain.until_stopped(&server).await;
    info!("shutting down");
    tasks.abort_all();
    if let Some(dir) = &cluster {
        dir.leave().await;
    }
    server.shutdown();
    // Give sessions a moment to write their closing stream errors and record presence.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server.sessions.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn archive_retention(server: Arc<Server>, keep: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match kabar_modules::mam::apply_retention(&server, keep).await {
            Ok(n) if n > 0 => info!(deleted = n, "archive retention applied"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "archive retention failed"),
        }
    }
}

async fn accept_c2s(listener: TcpListener, c2s: Arc<c2s::C2s>, direct_tls: bool) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(c2s.clone().handle(tcp, peer, direct_tls));
            }
            Err(e) => {
                // Usually fd exhaustion: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_components(listener: TcpListener, server: Arc<Server>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(component::handle(server.clone(), tcp, peer));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn read_password(given: Option<String>, jid: &str) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprint!("Password for {jid}: ");
        let _ = std::io::stderr().flush();
        // Hide the typed password where a terminal is present.
        let _ = std::process::Command::new("stty").arg("-echo").stdin(std::process::Stdio::inherit()).status();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if interactive {
        let _ = std::process::Command::new("stty").arg("echo").stdin(std::process::Stdio::inherit()).status();
        eprintln!();
    }
    read.context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("empty password: give one with --password or on standard input");
    }
    Ok(password)
}

async fn invite(cmd: InviteCommand) -> Result<()> {
    use kabar_modules::invite as inv;
    let common = match &cmd {
        InviteCommand::Create { common, .. } | InviteCommand::Revoke { common, .. } | InviteCommand::List(common) => common.clone(),
    };
    let config = load_config(&common)?;
    let store = storage::open_store(&config).await?;
    let now = kabar_core::time::unix_now();
    match cmd {
        InviteCommand::Create { inviter, username, uses, expires_in, .. } => {
            let inviter = inviter.map(|i| accounts::parse_account(&i, &config.domain)).transpose()?;
            if let Some(i) = &inviter {
                if store.credentials(i.as_str()).await?.is_none() {
                    bail!("{i} has no account here (see `kabar user list`)");
                }
            }
            let new = inv::NewInvite { roster: inviter.is_some(), inviter, username, expires_in_secs: expires_in, max_uses: uses, limited: false };
            let created = inv::create(&store, &config, new, now).await?;
            println!("{}\n{}\nexpires {}", created.landing_url, created.uri, kabar_core::time::xep0082(created.invite.expires));
        }
        InviteCommand::List(_) => {
            for i in inv::list(&store).await? {
                println!(
                    "{} inviter={} username={} uses={}/{} expires={} {}",
                    i.id,
                    i.inviter.as_deref().unwrap_or("-"),
                    i.username.as_deref().unwrap_or("-"),
                    i.uses,
                    i.max_uses,
                    kabar_core::time::xep0082(i.expires),
                    i.status(now).as_str()
                );
            }
        }
        InviteCommand::Revoke { id, .. } => {
            if !inv::revoke(&store, id.trim()).await? {
                bail!("no invite with id {id} (see `kabar invite list`)");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `kabar user …` while the server runs: through its admin API, so the running server acts on it
/// (a removed account's sessions are closed, a changed password applies at once).
async fn user_via_api(api: &admin_client::AdminClient, config: &kabar_core::Config, cmd: UserCommand) -> Result<()> {
    use admin_client::path_segment;
    use serde_json::json;
    let parse = |jid: &str| accounts::parse_account(jid, &config.domain);
    eprintln!("(the server is running: using its admin API)");
    match cmd {
        UserCommand::Add { jid, password, .. } => {
            let jid = parse(&jid)?;
            let password = read_password(password, jid.as_str())?;
            api.expect_ok("POST", "/users", Some(&json!({ "jid": jid.as_str(), "password": password }))).await?;
            println!("created {jid}");
        }
        UserCommand::Remove { jid, .. } => {
            let jid = parse(&jid)?;
            api.expect_ok("DELETE", &format!("/users/{}", path_segment(jid.as_str())), None).await?;
            println!("removed {jid}");
        }
        UserCommand::Passwd { jid, password, .. } => {
            let jid = parse(&jid)?;
            let password = read_password(password, jid.as_str())?;
            let path = format!("/users/{}/password", path_segment(jid.as_str()));
            api.expect_ok("POST", &path, Some(&json!({ "password": password }))).await?;
            println!("password changed for {jid}");
        }
        UserCommand::List(_) => {
            let mut after: Option<String> = None;
            loop {
                let path = match &after {
                    Some(a) => format!("/users?limit=1000&after={}", path_segment(a)),
                    None => "/users?limit=1000".to_owned(),
                };
                let page = api.expect_ok("GET", &path, None).await?;
                for user in page["users"].as_array().into_iter().flatten() {
                    if let Some(jid) = user["jid"].as_str() {
                        println!("{jid}");
                    }
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

async fn user(cmd: UserCommand) -> Result<()> {
    let common = match &cmd {
        UserCommand::Add { common, .. } | UserCommand::Remove { common, .. } | UserCommand::Passwd { common, .. } => common.clone(),
        UserCommand::List(common) => common.clone(),
    };
    let config = load_config(&common)?;
    if let Some(api) = admin_client::AdminClient::for_running_server(&config).await? {
        return user_via_api(&api, &config, cmd).await;
    }
    let store = storage::open_store(&config).await?;
    let parse = |jid: &str| accounts::parse_account(jid, &config.domain);
    let explain = |e: AccountError| -> anyhow::Error {
        match e {
            AccountError::Exists => anyhow::anyhow!("the account already exists (use `kabar user passwd` to change its password)"),
            AccountError::NotFound => anyhow::anyhow!("no such account (see `kabar user list`)"),
            other => other.into(),
        }
    };
    match cmd {
        UserCommand::Add { jid, password, .. } => {
            let jid = parse(&jid)?;
            let password = read_password(password, jid.as_str())?;
            accounts::create(&store, &jid, &password).await.map_err(explain)?;
            println!("created {jid}");
        }
        UserCommand::Remove { jid, .. } => {
            let jid = parse(&jid)?;
            accounts::delete(&store, &jid).await.map_err(explain)?;
            println!("removed {jid}");
        }
        UserCommand::Passwd { jid, password, .. } => {
            let jid = parse(&jid)?;
            let password = read_password(password, jid.as_str())?;
            accounts::set_password(&store, &jid, &password).await.map_err(explain)?;
            println!("password changed for {jid}");
        }
        UserCommand::List(_) => {
            for user in store.list_accounts().await? {
                println!("{user}");
            }
        }
    }
    Ok(())
}
