//! The CLI's side of the admin API: when a server for the same configuration is running, `kabar
//! user …` goes through its `/admin/api/v1` (so, say, removing an account also closes its live
//! sessions) instead of writing the store behind the server's back.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use kabar_core::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::http::admin::BASE;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct AdminClient {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: String,
    token: String,
    tls: TlsConnector,
}

impl AdminClient {
    /// A client for the running server of `config`, or `None` when nothing answers on its HTTPS
    /// listener (the server is not running) or the admin API is off.
    pub async fn for_running_server(config: &Config) -> Result<Option<AdminClient>> {
        if !config.admin.enabled {
            return Ok(None);
        }
        let Some(listen) = config.http.listen.first() else { return Ok(None) };
        // A wildcard listener is reached on loopback.
        let ip = match listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(None),
        }
        let token_file = config.admin.token_file.clone().unwrap_or_else(|| config.data_dir.join("admin-token"));
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("the server is running but its admin token {} cannot be read", token_file.display()))?
            .trim()
            .to_owned();
        let server_name = ServerName::try_from(config.domain.clone()).map_err(|_| anyhow!("bad domain"))?;
        let tls = connector(config)?;
        Ok(Some(AdminClient { addr, server_name, host: config.domain.clone(), token, tls }))
    }

    /// One API call: `path` below `/admin/api/v1`. Returns the status and the JSON body (Null when
    /// empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| anyhow!("the admin API did not answer within {} s", REQUEST_TIMEOUT.as_secs()))?
    }

    async fn call_inner(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let tcp = TcpStream::connect(self.addr).await.context("connecting to the admin API")?;
        let tls = self.tls.connect(self.server_name.clone(), tcp).await.context("TLS to the admin API")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{BASE}{path}"))
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload))?;
        let resp = sender.send_request(req).await.context("calling the admin API")?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, json))
    }

    /// Like [`AdminClient::call`], turning a non-2xx answer into an error with the API's message.
    pub async fn expect_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, json) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let message = json.get("message").or_else(|| json.get("error")).and_then(Value::as_str).unwrap_or("");
        bail!("the running server refused: HTTP {status} {message}")
    }
}

/// Trusts what the server presents: its generated private CA, or the configured chain's
/// certificates (their issuers are then anchors, so a commercial chain works without system roots).
fn connector(config: &Config) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    let generated = config.data_dir.join("tls").join("ca.pem");
    let files: Vec<&Path> = match &config.tls.cert {
        Some(chain) => vec![chain.as_path()],
        None => vec![generated.as_path()],
    };
    for file in files {
        let certs = CertificateDer::pem_file_iter(file).with_context(|| format!("reading {}", file.display()))?;
        for cert in certs {
            roots.add(cert.with_context(|| format!("parsing {}", file.display()))?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(tls)))
}

/// Percent-encodes one path segment (RFC 3986 §3.3: unreserved characters and `@` stay).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
