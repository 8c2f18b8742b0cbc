//! Runs the real `kabar` binary for end-to-end tests: a private temp folder with a config file and a
//! data folder, free loopback ports, accounts made with `kabar user add`, start / SIGTERM / restart,
//! and a `Drop` that kills the process and deletes the folder.
//!
//! TLS trust: tokio-xmpp 6 builds its rustls trust store from `rustls-native-certs`, which reads
//! `SSL_CERT_DIR` when set. [`trust_dir`] points that variable, once per test process, at a folder of
//! its own; every started server copies its generated `<data>/tls/ca.pem` there under a unique
//! name (and removes it on drop). Each server has its own private CA; rustls tries every trust
//! anchor whose subject matches, so many CAs in the folder do not disturb each other.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after being started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// The folder named by `SSL_CERT_DIR` for this test process (set on first use).
pub fn trust_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kabar-e2e-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create trust folder");
        // Edition 2021: a safe call. Rust's std serialises its own environment access; this runs
        // once, before any client of this process builds a TLS configuration.
        std::env::set_var("SSL_CERT_DIR", &dir);
        // SSL_CERT_FILE would be read in addition; make sure a stray one from the caller is not.
        std::env::remove_var("SSL_CERT_FILE");
        dir
    })
}

/// With `KABAR_E2E_WIRE=1`, prints tokio-xmpp's `SEND`/`RECV` XML trace (after TLS, so readable)
/// to stderr, each line tagged with the test thread's name. For diagnosing one test:
/// `KABAR_E2E_WIRE=1 cargo test -p kabar --release --test crates_client NAME -- --nocapture`.
pub fn wire_log() {
    struct Wire;
    impl log::Log for Wire {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with("tokio_xmpp")
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let t = std::thread::current();
                eprintln!("[{} {:?}] {} {}", r.level(), t.name().unwrap_or("?"), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("KABAR_E2E_WIRE").is_some_and(|v| v != "0") && log::set_logger(&Wire).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
}

/// A free loopback port, held in TIME_WAIT until the server binds it. Dropping a listener bound to
/// port 0 puts the port straight back in the pool, where a parallel test's bind(0) may be handed it
/// before this test's server starts ("address in use"). Connecting once and closing the port's
/// side first leaves 127.0.0.1:port in TIME_WAIT for a minute: bind(0) and outgoing connections
/// skip it, while the server (tokio binds with SO_REUSEADDR) takes it at once.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    let port = l.local_addr().expect("local addr").port();
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to the reserved port");
    let (accepted, _) = l.accept().expect("accept on the reserved port");
    drop(accepted);
    drop(client);
    port
}

pub struct TestServer {
    /// Temp folder holding everything of this server (deleted on drop).
    pub root: PathBuf,
    pub config: PathBuf,
    pub data: PathBuf,
    /// STARTTLS c2s port on 127.0.0.1.
    pub port: u16,
    /// Direct TLS c2s port on 127.0.0.1.
    pub direct_tls_port: u16,
    pub domain: String,
    log: PathBuf,
    ca_copy: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl TestServer {
    /// Prepares (does not start) a server for `localhost` with its own temp folder and ports.
    pub fn new(name: &str) -> Self {
        wire_log();
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("kabar-e2e-{}-{}-{}", name, std::process::id(), id));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create test folder");
        let data = root.join("data");
        let config = root.join("kabar.toml");
        let port = free_port();
        let mut direct_tls_port = free_port();
        while direct_tls_port == port {
            direct_tls_port = free_port();
        }
        let domain = "localhost".to_string();
        std::fs::write(
            &config,
            format!(
                "domain = \"{domain}\"\n\n[c2s]\nlisten = [\"127.0.0.1:{port}\"]\ndirect_tls_listen = [\"127.0.0.1:{direct_tls_port}\"]\n\n[http]\nlisten = []\n\n[log]\nlevel = \"info\"\n"
            ),
        )
        .expect("write config");
        let ca_copy = trust_dir().join(format!("{name}-{}-{id}.pem", std::process::id()));
        TestServer {
            log: root.join("server.log"),
            root,
            config,
            data,
            port,
            direct_tls_port,
            domain,
            ca_copy,
            child: None,
            starts: 0,
        }
    }

    /// `127.0.0.1:PORT` of the STARTTLS listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kabar user add LOCAL@DOMAIN --password PW` (works whether the server runs or not).
    pub fn add_user(&self, local: &str, password: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_kabar"))
            .args(["user", "add", &format!("{local}@{}", self.domain), "--password", password])
            .arg("--config")
            .arg(&self.config)
            .arg("--data")
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .expect("run kabar user add");
        assert!(
            out.status.success(),
            "kabar user add {local} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `kabar serve`, waits until the STARTTLS port accepts, and trusts the server's CA.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open server log");
        let child = Command::new(env!("CARGO_BIN_EXE_kabar"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn kabar serve");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                self.child = None;
                panic!("kabar serve exited during start-up with {status}; log:\n{}", self.log_text());
            }
            if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                panic!("kabar serve did not accept on {target} within {START_TIMEOUT:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.install_ca();
    }

    fn install_ca(&self) {
        let ca = self.data.join("tls").join("ca.pem");
        let pem = std::fs::read(&ca).unwrap_or_else(|e| panic!("server CA {} not readable: {e}", ca.display()));
        assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"), "{} is not a PEM certificate", ca.display());
        // Write then rename, so a concurrent reader never sees half a file. Retried because another
        // test's drop may remove the (then empty) folder between our create and write.
        let tmp = self.ca_copy.with_extension("tmp");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = std::fs::create_dir_all(trust_dir())
                .and_then(|()| std::fs::write(&tmp, &pem))
                .and_then(|()| std::fs::rename(&tmp, &self.ca_copy));
            match res {
                Ok(()) => break,
                Err(e) if attempt >= 5 => panic!("cannot install CA copy {}: {e}", self.ca_copy.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends SIGTERM (`kill -TERM PID`) and waits for the process to exit; returns its status.
    pub fn stop_sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        let kill = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
        assert!(kill.success(), "kill -TERM {} failed: {kill}", child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kabar serve did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the server wrote to stdout/stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- kabar server log ({}, last {} lines) ----\n{}\n---- end of server log ----",
                self.root.display(),
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_file(&self.ca_copy);
        let _ = std::fs::remove_dir_all(&self.root);
        // Succeeds only once no other server of this process still has its CA there.
        let _ = std::fs::remove_dir(trust_dir());
    }
}
