//! 1:1 chat between pairs of logged-in sessions: one task per pair drives both connections, so the
//! flow-control window of each sender (messages sent but not yet delivered to its partner) is plain
//! local state, with no locks or channels on the hot path.
//!
//! Bodies are `"<seq> <send time ns> <padding>"` (the xmppload.py format); latency is receive time
//! minus send time on the generator's monotonic clock.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use kabar_xml::{elem, element_to_bytes, ElementExt, StreamEvent, NS_CLIENT};
use rand::Rng;
use std::io::Write as _;
use tokio::time::{sleep_until, Duration, Instant};

use crate::conn::{check_stream_error, Conn};
use crate::metrics::{instant_to_ns, now_ns};

const BODY_MARK: &str = "@@kabar-load-body@@";

#[derive(Clone)]
pub struct Plan {
    /// Messages per second per sender; 0 = flat out within `window`.
    pub rate: f64,
    pub window: u64,
    /// Messages sent before this (generator ns) are warm-up: neither counted nor measured.
    pub record_from_ns: u64,
    /// Messages sent before this (generator ns) belong to an earlier run on the same connections
    /// (a sweep's previous step): ignored, and not taken off this run's windows.
    pub stale_before_ns: u64,
    pub stop_sending: Instant,
    /// Latest moment to wait for outstanding deliveries after sending stopped.
    pub drain_until: Instant,
    /// Receive-time boundaries (generator ns) splitting the latencies into segments.
    pub segments: Vec<u64>,
    pub pad: Arc<str>,
    /// XEP-0334 `<no-store/>` hint in every message.
    pub no_store: bool,
}

#[derive(Default)]
pub struct Stats {
    pub sent: u64,
    pub recv: u64,
    pub bad: u64,
    pub bounced: u64,
    /// Late deliveries of an earlier run's messages (see `Plan::stale_before_ns`).
    pub stale: u64,
    pub last_recv_ns: u64,
    /// One latency list (ns) per segment.
    pub lat: Vec<Vec<u64>>,
    pub errors: Vec<String>,
}

impl Stats {
    pub fn merge(&mut self, o: Stats) {
        self.sent += o.sent;
        self.recv += o.recv;
        self.bad += o.bad;
        self.bounced += o.bounced;
        self.stale += o.stale;
        self.last_recv_ns = self.last_recv_ns.max(o.last_recv_ns);
        if self.lat.len() < o.lat.len() {
            self.lat.resize_with(o.lat.len(), Vec::new);
        }
        for (a, b) in self.lat.iter_mut().zip(o.lat) {
            a.extend(b);
        }
        self.errors.extend(o.errors);
    }
}

struct Sender {
    /// `<message … to='partner'><body>` and `</body></message>`, serialised once by kabar-xml.
    head: Vec<u8>,
    tail: Vec<u8>,
    seq: u64,
    outstanding: u64,
    t_start: Instant,
}

impl Sender {
    fn new(to: &str, no_store: bool, t_start: Instant) -> Result<Sender> {
        let mut msg = elem("message", NS_CLIENT)
            .with_attr("to", to)
            .with_attr("type", "chat")
            .with_child(elem("body", NS_CLIENT).with_text(BODY_MARK));
        if no_store {
            msg.append_child(elem("no-store", "urn:xmpp:hints"));
        }
        let bytes = element_to_bytes(&msg).map_err(|e| anyhow!("{e}"))?;
        let text = String::from_utf8(bytes).map_err(|e| anyhow!("{e}"))?;
        let (head, tail) = text
            .split_once(BODY_MARK)
            .ok_or_else(|| anyhow!("template"))?;
        Ok(Sender {
            head: head.as_bytes().to_vec(),
            tail: tail.as_bytes().to_vec(),
            seq: 0,
            outstanding: 0,
            t_start,
        })
    }

    fn send(&mut self, out: &mut Vec<u8>, pad: &str, stats: &mut Stats, record_from: u64) {
        self.seq += 1;
        self.outstanding += 1;
        let ts = now_ns();
        if ts >= record_from {
            stats.sent += 1;
        }
        out.extend_from_slice(&self.head);
        let _ = write!(out, "{} {} {}", self.seq, ts, pad);
        out.extend_from_slice(&self.tail);
    }

    /// Rate mode: catch up to the schedule.
    fn send_due(
        &mut self,
        now: Instant,
        rate: f64,
        out: &mut Vec<u8>,
        pad: &str,
        stats: &mut Stats,
        rf: u64,
    ) {
        if now < self.t_start {
            return;
        }
        let due = ((now - self.t_start).as_secs_f64() * rate) as u64 + 1;
        while self.seq < due {
            self.send(out, pad, stats, rf);
        }
    }

    fn next_due(&self, rate: f64) -> Instant {
        self.t_start + Duration::from_secs_f64(self.seq as f64 / rate)
    }
}

/// Handles what arrived on `conn`: deliveries from the partner (`partner` is the partner's
/// sender state) and bounces of our own messages (`own`).
fn process(
    conn: &mut Conn,
    own: &mut Sender,
    partner: &mut Sender,
    plan: &Plan,
    stats: &mut Stats,
) -> Result<()> {
    while let Some(ev) = conn.events.pop_front() {
        let el = match ev {
            StreamEvent::Element(el) => el,
            StreamEvent::Open(_) => continue,
            StreamEvent::Close => return Err(anyhow!("stream closed by server")),
        };
        match el.name() {
            "message" => {
                if el.attr("type") == Some("error") {
                    stats.bounced += 1;
                    own.outstanding = own.outstanding.saturating_sub(1);
                    continue;
                }
                let Some(body) = el.get_child("body", NS_CLIENT) else {
                    continue;
                };
                let t = now_ns();
                let text = body.text();
                let mut it = text.split(' ');
                let ts = it.nth(1).and_then(|ts| ts.parse::<u64>().ok());
                let Some(ts) = ts else {
                    stats.bad += 1;
                    continue;
                };
                if ts < plan.stale_before_ns {
                    stats.stale += 1;
                    continue;
                }
                partner.outstanding = partner.outstanding.saturating_sub(1);
                if ts >= plan.record_from_ns {
                    stats.recv += 1;
                    stats.last_recv_ns = t;
                    let seg = plan.segments.iter().take_while(|b| **b <= t).count();
                    stats.lat[seg].push(t.saturating_sub(ts));
                }
            }
            "iq" => answer_iq(conn, &el)?,
            _ => check_stream_error(&el)?,
        }
    }
    Ok(())
}

/// Answers an IQ get/set (e.g. a server ping, XEP-0199) so the session stays healthy.
fn answer_iq(conn: &mut Conn, el: &kabar_xml::Element) -> Result<()> {
    if !matches!(el.attr("type"), Some("get") | Some("set")) {
        return Ok(());
    }
    let mut r = elem("iq", NS_CLIENT).with_attr("type", "result");
    if let Some(id) = el.attr("id") {
        r.set_attr_str("id", id);
    }
    if let Some(from) = el.attr("from") {
        r.set_attr_str("to", from);
    }
    conn.queue_el(&r)
}

/// Reads both connections of a pair until neither has received anything for `quiet` (or `until`),
/// answering IQs: what an overloaded step left in flight arrives here, not in the next step.
/// Returns the stanzas read.
pub async fn settle_pair(
    a: &mut Conn,
    b: &mut Conn,
    quiet: Duration,
    until: Instant,
) -> Result<u64> {
    let mut n = 0u64;
    loop {
        for c in [&mut *a, &mut *b] {
            while let Some(ev) = c.events.pop_front() {
                match ev {
                    StreamEvent::Element(el) => {
                        n += 1;
                        if el.name() == "iq" {
                            answer_iq(c, &el)?;
                        } else {
                            check_stream_error(&el)?;
                        }
                    }
                    StreamEvent::Open(_) => {}
                    StreamEvent::Close => return Err(anyhow!("stream closed by server")),
                }
            }
            c.flush()
                .await
                .map_err(|e| anyhow!("write: {}", e.kind()))?;
        }
        let wake = (Instant::now() + quiet).min(until);
        tokio::select! {
            r = a.read_some() => r?,
            r = b.read_some() => r?,
            _ = sleep_until(wake) => return Ok(n),
        }
    }
}

/// Runs one pair until sending stops and every message is delivered (or the drain time is up).
pub async fn run_pair(mut a: Conn, mut b: Conn, plan: Plan) -> (Stats, Conn, Conn) {
    let mut stats = Stats {
        lat: vec![Vec::new(); plan.segments.len() + 1],
        ..Stats::default()
    };
    if let Err(e) = pair_loop(&mut a, &mut b, &plan, &mut stats).await {
        stats.errors.push(e.to_string());
    }
    (stats, a, b)
}

async fn pair_loop(a: &mut Conn, b: &mut Conn, plan: &Plan, stats: &mut Stats) -> Result<()> {
    let now = Instant::now();
    // Rate mode: spread senders over one period so they do not fire in lock-step.
    let offset = |rng: &mut rand::rngs::ThreadRng| {
        if plan.rate > 0.0 {
            Duration::from_secs_f64(rng.random::<f64>() / plan.rate)
        } else {
            Duration::ZERO
        }
    };
    let (oa, ob) = {
        let mut rng = rand::rng();
        (offset(&mut rng), offset(&mut rng))
    };
    let mut sa = Sender::new(&b.jid, plan.no_store, now + oa)?;
    let mut sb = Sender::new(&a.jid, plan.no_store, now + ob)?;
    let pad: &str = &plan.pad;
    let rf = plan.record_from_ns;
    loop {
        let now = Instant::now();
        let sending = now < plan.stop_sending;
        if !sending && ((sa.outstanding == 0 && sb.outstanding == 0) || now >= plan.drain_until) {
            return Ok(());
        }
        if sending {
            if plan.rate > 0.0 {
                sa.send_due(now, plan.rate, &mut a.wbuf, pad, stats, rf);
                sb.send_due(now, plan.rate, &mut b.wbuf, pad, stats, rf);
            } else {
                while sa.outstanding < plan.window {
                    sa.send(&mut a.wbuf, pad, stats, rf);
                }
                while sb.outstanding < plan.window {
                    sb.send(&mut b.wbuf, pad, stats, rf);
                }
            }
        }
        a.flush()
            .await
            .map_err(|e| anyhow!("write: {}", e.kind()))?;
        b.flush()
            .await
            .map_err(|e| anyhow!("write: {}", e.kind()))?;
        let wake = if !sending {
            plan.drain_until
        } else if plan.rate > 0.0 {
            sa.next_due(plan.rate)
                .min(sb.next_due(plan.rate))
                .min(plan.stop_sending)
        } else {
            plan.stop_sending
        };
        tokio::select! {
            r = a.read_some() => { r?; process(a, &mut sa, &mut sb, plan, stats)?; }
            r = b.read_some() => { r?; process(b, &mut sb, &mut sa, plan, stats)?; }
            _ = sleep_until(wake) => {}
        }
    }
}

/// Generator ns of an Instant (for segment boundaries).
pub fn ns_at(t: Instant) -> u64 {
    instant_to_ns(t.into_std())
}
