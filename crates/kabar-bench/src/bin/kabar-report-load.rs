//! `kabar-report-load`: how many problem reports per second kabar's outage monitor ingests through
//! `POST /status/reports` (docs/MONITOR.md, docs/BENCHMARKS.md).
//!
//! C keep-alive HTTPS connections, spread over S loopback source addresses (127.0.0.10…), each
//! keeping `--pipeline` requests in flight (HTTP/1.1 pipelining: the server answers in order). Every
//! report has a fresh device id, so what limits counting is the per-address bucket, as in a flood.
//! Prints one JSON line: reports sent, answered 202, counted, reports/s, latency percentiles of a
//! request (send → its answer), and the server's CPU when `--server-pid` is given. Loopback only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
#[command(name = "kabar-report-load", about = "POST /status/reports load generator (loopback only)")]
struct Args {
    #[arg(long, default_value_t = 5443)]
    port: u16,
    /// TLS server name (the XMPP domain).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// PEM file with the CA to trust (kabar's `<data_dir>/tls/ca.pem`).
    #[arg(long)]
    ca: PathBuf,
    /// The monitored service reported on.
    #[arg(long)]
    service: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Distinct source addresses 127.0.0.10 … (each has its own per-address report bucket).
    #[arg(long, default_value_t = 64)]
    sources: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Reports/s in total, spread over the connections (0: flat out).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 0)]
    server_pid: u32,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    accepted: AtomicU64,
    counted: AtomicU64,
    other_status: AtomicU64,
    errors: AtomicU64,
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    match runtime.block_on(run(args)) {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).map_err(|e| format!("{}: {e}", args.ca.display()))? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = (args.server_pid != 0).then(|| proc_cpu_s(args.server_pid)).flatten();
    // Our own CPU: when the chat generator shares our core, a busy report generator delays it.
    let own0 = proc_cpu_s(std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let src = Ipv4Addr::new(127, 0, 0, 10 + (i % args.sources.clamp(1, 240)) as u8);
        let per_conn = (args.rate > 0.0).then(|| args.rate / args.connections.max(1) as f64);
        tasks.push(tokio::spawn(connection(
            i,
            src,
            args.port,
            args.domain.clone(),
            args.service.clone(),
            args.pipeline.max(1),
            per_conn,
            tls.clone(),
            totals.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            latencies.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu0.and_then(|c0| proc_cpu_s(args.server_pid).map(|c1| c1 - c0));
    let own = own0.and_then(|c0| proc_cpu_s(std::process::id()).map(|c1| c1 - c0));
    latencies.sort_unstable();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).map(|us| *us as f64 / 1000.0);
    let accepted = totals.accepted.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "reports",
        "connections": args.connections,
        "sources": args.sources,
        "pipeline": args.pipeline,
        "rate_target": args.rate,
        "duration_s": (elapsed * 10.0).round() / 10.0,
        "sent": totals.sent.load(Ordering::Relaxed),
        "accepted_202": accepted,
        "counted": totals.counted.load(Ordering::Relaxed),
        "other_status": totals.other_status.load(Ordering::Relaxed),
        "errors": totals.errors.load(Ordering::Relaxed),
        "reports_per_s": (accepted as f64 / elapsed).round(),
        "latency_ms_p50": pct(0.5),
        "latency_ms_p99": pct(0.99),
        "server_cpu_s": cpu,
        "server_cores_busy": cpu.map(|c| (c / elapsed * 100.0).round() / 100.0),
        "gen_cores_busy": own.map(|c| (c / elapsed * 100.0).round() / 100.0),
    })
    .to_string())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    idx: usize,
    src: Ipv4Addr,
    port: u16,
    domain: String,
    service: String,
    pipeline: usize,
    rate: Option<f64>,
    tls: TlsConnector,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut latencies = Vec::new();
    let mut seq: u64 = 0;
    let began = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let result = async {
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket.bind(SocketAddr::new(IpAddr::V4(src), 0)).map_err(|e| e.to_string())?;
            let tcp = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(domain.clone()).map_err(|e| e.to_string())?;
            let mut s = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut in_flight: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                if !stopping {
                    let mut out = Vec::new();
                    // Paced: send only what the target rate allows by now; wait for the next slot
                    // when nothing is in flight.
                    let allowed = rate.map_or(u64::MAX, |r| (r * began.elapsed().as_secs_f64()) as u64 + 1);
                    if in_flight.is_empty() && seq >= allowed {
                        let r = rate.unwrap_or(1.0).max(0.001);
                        tokio::time::sleep(Duration::from_secs_f64(((seq + 1) as f64 / r - began.elapsed().as_secs_f64()).max(0.0005))).await;
                        continue;
                    }
                    while in_flight.len() < pipeline && seq < allowed {
                        seq += 1;
                        let body = format!(
                            r#"{{"service":"{service}","problem":"cant_send","region":"Jakarta","device":"b{idx}-{seq}"}}"#
                        );
                        out.extend_from_slice(
                            format!("POST /status/reports HTTP/1.1\r\nHost: {domain}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                                .as_bytes(),
                        );
                        in_flight.push_back(Instant::now());
                        totals.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if !out.is_empty() {
                        s.write_all(&out).await.map_err(|e| e.to_string())?;
                    }
                } else if in_flight.is_empty() {
                    return Ok::<(), String>(());
                }
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.map_err(|_| "read timeout".to_owned())?.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed".to_owned());
                }
                buf.extend_from_slice(&chunk[..n]);
                // Parse every complete response in the buffer.
                while let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "bad head")?;
                    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status")?;
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok()))
                        .ok_or("no content-length")?;
                    if buf.len() < head_end + 4 + len {
                        break;
                    }
                    let body = &buf[head_end + 4..head_end + 4 + len];
                    if status == 202 {
                        totals.accepted.fetch_add(1, Ordering::Relaxed);
                        const COUNTED: &[u8] = br#""counted":true"#;
                        if body.windows(COUNTED.len()).any(|w| w == COUNTED) {
                            totals.counted.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        totals.other_status.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(t) = in_flight.pop_front() {
                        latencies.push(t.elapsed().as_micros() as u64);
                    }
                    buf.drain(..head_end + 4 + len);
                }
            }
        }
        .await;
        if let Err(e) = result {
            if !stop.load(Ordering::Relaxed) {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("connection {idx}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    latencies
}
