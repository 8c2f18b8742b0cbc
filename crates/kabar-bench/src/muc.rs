//! The `muc` scenario: XEP-0045 fan-out. Account FIRST creates a room at `conference.DOMAIN`
//! (kabar: the channel preset, archiving off; other servers keep their defaults for the fields they
//! do not know), N readers (accounts FIRST+1 ..= FIRST+N) join it, then the owner posts messages
//! (`--rate` per second for `--duration` seconds, or flat out in a burst of `--window` × 10 when
//! `--rate 0`). Every reader counts what arrives. Reported: deliveries/s (messages × readers that
//! arrived, over the time from the first post to the last arrival), delivery latency percentiles
//! (post → arrival at a reader), joins/s, and the server's CPU.
//!
//! Readers log in through kabar-xml's framer, then read raw stanza bytes (scan.rs): a message's
//! body `fan <sent-ns> <k> …` is found with a byte scan, each reader keeps a bitmap of the posts it
//! got (a lost or duplicated delivery is counted, not hidden), and 1 message in
//! [`CHECK_EVERY`] is also parsed in full and compared with what the scan read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use kabar_xml::{elem, Element, ElementExt};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use crate::conn::{self, Conn, Ctx};
use crate::metrics::{lat_summary, now_ns, round1, round3, CpuMeter};
use crate::scan::{self, Piece};
use crate::scenarios::base;
use crate::Args;

const NS_CLIENT: &str = "jabber:client";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_DATA: &str = "jabber:x:data";
const READ_BUF: usize = 16 * 1024;
/// Readers' buffer: a reader comes back with a backlog (the other joins' presence, then the posts),
/// so larger reads mean fewer wake-ups and syscalls per delivery.
const READER_BUF: usize = 64 * 1024;
/// One message in this many is also parsed in full to cross-check the byte scan.
const CHECK_EVERY: u64 = 64;

/// `fan <sent-ns> <k> <padding>` → (sent-ns, k).
fn parse_fan(body: &[u8]) -> Option<(u64, u64)> {
    let rest = body.strip_prefix(b"fan ")?;
    let mut it = rest.split(|b| *b == b' ');
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
    Some((num(it.next()?)?, num(it.next()?)?))
}

/// One reader's account of the posts it received.
#[derive(Default)]
struct Tally {
    /// Bit k: post k arrived.
    seen: Vec<u64>,
    got: u64,
    duplicates: u64,
    /// Bodies that did not read as `fan <ns> <k>` with k < messages.
    bad: u64,
    bounced: u64,
    scan_checked: u64,
    scan_mismatches: u64,
    lat: Vec<u64>,
}

impl Tally {
    fn new(messages: u64) -> Tally {
        Tally {
            seen: vec![0; messages.div_ceil(64) as usize],
            ..Tally::default()
        }
    }

    /// A groupchat body arrived at `now` (generator ns).
    fn body(&mut self, body: &[u8], now: u64, messages: u64) {
        let Some((sent, k)) = parse_fan(body).filter(|(_, k)| *k < messages) else {
            self.bad += 1;
            return;
        };
        let (w, b) = ((k / 64) as usize, 1u64 << (k % 64));
        if self.seen[w] & b != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[w] |= b;
        self.got += 1;
        self.lat.push(now.saturating_sub(sent));
    }

    /// The full parse's reading of a stanza the byte scan already handled.
    fn cross_check(&mut self, stanza: &[u8], scanned: Option<&[u8]>) {
        self.scan_checked += 1;
        let full = scan::parse_stanza(stanza)
            .ok()
            .and_then(|el| el.get_child("body", NS_CLIENT).map(|b| b.text()));
        let same = match (full, scanned) {
            (Some(f), Some(s)) => parse_fan(f.as_bytes()).is_some() && parse_fan(f.as_bytes()) == parse_fan(s),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.scan_mismatches += 1;
        }
    }

    fn merge(&mut self, o: Tally) {
        self.got += o.got;
        self.duplicates += o.duplicates;
        self.bad += o.bad;
        self.bounced += o.bounced;
        self.scan_checked += o.scan_checked;
        self.scan_mismatches += o.scan_mismatches;
        self.lat.extend(o.lat);
    }
}

/// Reads one reader's connection until it has every post, the stream ends, or `stop` fires.
async fn read_posts(
    mut c: Conn,
    messages: u64,
    last_arrival: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> (Tally, Option<String>) {
    let mut t = Tally::new(messages);
    let mut msgs = 0u64;
    // What the framer produced before the switch to raw bytes.
    let now = now_ns();
    while let Some(ev) = c.events.pop_front() {
        if let kabar_xml::StreamEvent::Element(el) = ev {
            if el.name() == "message" && el.attr("type") != Some("error") {
                if let Some(b) = el.get_child("body", NS_CLIENT) {
                    t.body(b.text().as_bytes(), now, messages);
                }
            }
        }
    }
    let mut error = c.set_raw(true).err().map(|e| e.to_string());
    while error.is_none() && t.got < messages {
        tokio::select! {
            r = c.read_some() => if let Err(e) = r { error = Some(e.to_string()); break },
            _ = stop.changed() => break,
        }
        // One arrival time per read: every stanza in it reached the generator together.
        let now = now_ns();
        let before = t.got;
        let mut replies = Vec::new();
        let r = c.raw_pieces(|kind, bytes| {
            if kind == Piece::Close {
                error = Some("stream closed by server".into());
            }
            if kind != Piece::Stanza {
                return true;
            }
            let st = scan::trim_start(bytes);
            match scan::tag_name(st) {
                b"message" if scan::attr(st, b"type") == Some(b"error") => t.bounced += 1,
                b"message" => {
                    let body = scan::child_text(st, b"body");
                    if let Some(b) = body {
                        t.body(b, now, messages);
                    }
                    msgs += 1;
                    if msgs % CHECK_EVERY == 1 {
                        t.cross_check(st, body);
                    }
                }
                b"iq" if matches!(scan::attr(st, b"type"), Some(b"get" | b"set")) => {
                    // e.g. a server ping (XEP-0199): answered so the session stays healthy.
                    match scan::parse_stanza(st) {
                        Ok(el) => replies.push(iq_result(&el)),
                        Err(e) => error = Some(e.to_string()),
                    }
                }
                b"stream:error" => error = Some("stream error".into()),
                _ => {}
            }
            true
        });
        if let Err(e) = r {
            error = Some(e.to_string());
        }
        if t.got > before {
            last_arrival.fetch_max(now, Ordering::Relaxed);
        }
        for el in &replies {
            if let Err(e) = c.queue_el(el) {
                error = Some(e.to_string());
            }
        }
        if !replies.is_empty() {
            if let Err(e) = c.flush().await {
                error = Some(format!("write: {}", e.kind()));
            }
        }
    }
    c.close().await;
    (t, error)
}

fn iq_result(iq: &Element) -> Element {
    let mut r = elem("iq", NS_CLIENT).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        r.set_attr_str("id", id);
    }
    if let Some(from) = iq.attr("from") {
        r.set_attr_str("to", from);
    }
    r
}

fn join_presence(room: &str, nick: &str) -> Element {
    elem("presence", NS_CLIENT)
        .with_attr("to", format!("{room}/{nick}"))
        .with_child(
            elem("x", NS_MUC).with_child(elem("history", NS_MUC).with_attr("maxstanzas", "0")),
        )
}

/// A reader's join on a raw connection (the byte scan skips the occupants' presence, the bulk of
/// a join in a big plain room): waits for the subject; what follows it stays unread.
async fn join_raw(c: &mut Conn, ctx: &Ctx, room: &str, nick: &str) -> Result<()> {
    c.set_raw(true)?;
    c.send_el(&join_presence(room, nick)).await?;
    let deadline = Instant::now() + ctx.op_timeout;
    loop {
        let mut outcome: Option<Result<()>> = None;
        c.raw_pieces(|kind, bytes| {
            let st = scan::trim_start(bytes);
            let name = scan::tag_name(st);
            outcome = match kind {
                Piece::Close => Some(Err(anyhow::anyhow!("stream closed by server"))),
                Piece::Stanza if name == b"stream:error" => {
                    Some(Err(anyhow::anyhow!("stream error")))
                }
                Piece::Stanza if name == b"message" && scan::has_child(st, b"subject") => {
                    Some(Ok(()))
                }
                Piece::Stanza if name == b"presence" && scan::attr(st, b"type") == Some(b"error") => {
                    let cond = scan::parse_stanza(st)
                        .map(|el| conn::error_condition(&el))
                        .unwrap_or_else(|e| e.to_string());
                    Some(Err(anyhow::anyhow!("join refused: {cond}")))
                }
                _ => None,
            };
            outcome.is_none()
        })?;
        if let Some(r) = outcome {
            return r;
        }
        tokio::time::timeout_at(deadline, c.read_some())
            .await
            .map_err(|_| anyhow::anyhow!("timeout"))??;
    }
}

/// Joins and waits for the subject (the last stanza of a join, XEP-0045 §7.2.15).
async fn join(c: &mut Conn, ctx: &Ctx, room: &str, nick: &str) -> Result<()> {
    c.send_el(&join_presence(room, nick)).await?;
    let el = c
        .wait_for(ctx, |e| {
            (e.name() == "message" && e.get_child("subject", NS_CLIENT).is_some())
                || (e.name() == "presence" && e.attr("type") == Some("error"))
        })
        .await?;
    if el.name() == "presence" {
        bail!("join refused: {}", conn::error_condition(&el));
    }
    Ok(())
}

fn field(var: &str, value: &str) -> Element {
    elem("field", NS_DATA)
        .with_attr("var", var)
        .with_child(elem("value", NS_DATA).with_text(value))
}

pub async fn muc(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let mut res = base(args, "muc");
    let room = format!("bench{}@conference.{}", std::process::id(), ctx.domain);
    res.insert("readers".into(), json!(args.users));
    match run(args, &ctx, &room, &mut res).await {
        Ok(()) => {}
        Err(e) => {
            res.insert("error".into(), json!(e.to_string()));
        }
    }
    res
}

/// The room configuration form: the standard fields, then (unless `minimal`) archiving off, and for
/// the `channel` preset kabar's channel field.
fn room_form(args: &Args, minimal: bool) -> Element {
    let mut form = elem("x", NS_DATA)
        .with_attr("type", "submit")
        .with_child(field(
            "FORM_TYPE",
            "http://jabber.org/protocol/muc#roomconfig",
        ))
        .with_child(field(
            "muc#roomconfig_maxusers",
            &(args.users + 10).to_string(),
        ));
    if !minimal {
        form.append_child(field("muc#roomconfig_enablearchiving", "0"));
        if args.muc_preset == "channel" {
            form.append_child(field("kabar#roomconfig_channel", "1"));
        }
    }
    form
}

async fn run(args: &Args, ctx: &Arc<Ctx>, room: &str, res: &mut Map<String, Value>) -> Result<()> {
    if args.muc_preset != "channel" && args.muc_preset != "room" {
        bail!("--muc-preset is channel or room");
    }
    res.insert("muc_preset".into(), json!(args.muc_preset));
    let mut owner = conn::login(ctx, &ctx.user(args.first), READ_BUF).await?;
    join(&mut owner, ctx, room, "owner").await?;
    let configured = owner
        .iq(ctx, "set", Some(room), elem("query", NS_OWNER).with_child(room_form(args, false)))
        .await;
    if let Err(e) = configured {
        // A server that refuses fields it does not know gets the standard ones only.
        res.insert("room_config".into(), json!(format!("minimal ({e})")));
        owner
            .iq(ctx, "set", Some(room), elem("query", NS_OWNER).with_child(room_form(args, true)))
            .await?;
    }

    // Readers log in and join with at most --concurrency in flight.
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut set = JoinSet::new();
    let t_join = Instant::now();
    for i in 1..=args.users {
        let (ctx, sem, room) = (ctx.clone(), sem.clone(), room.to_string());
        let user = ctx.user(args.first + i);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut c = conn::login_opts(&ctx, &user, READER_BUF, true).await?;
            join_raw(&mut c, &ctx, &room, &format!("r{i}")).await?;
            Ok::<Conn, anyhow::Error>(c)
        });
    }
    let mut readers = Vec::new();
    let mut join_errors = 0u64;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(c)) => readers.push(c),
            _ => join_errors += 1,
        }
    }
    let join_s = t_join.elapsed().as_secs_f64();
    res.insert("joined".into(), json!(readers.len()));
    res.insert("join_errors".into(), json!(join_errors));
    res.insert(
        "joins_per_s".into(),
        json!(round1(readers.len() as f64 / join_s.max(1e-9))),
    );
    if readers.is_empty() {
        bail!("no reader joined");
    }

    let messages: u64 = if args.rate > 0.0 {
        (args.rate * args.duration).ceil().max(1.0) as u64
    } else {
        args.window.max(1) * 10
    };
    let last_arrival = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers_set = JoinSet::new();
    for c in readers {
        readers_set.spawn(read_posts(c, messages, last_arrival.clone(), stop_rx.clone()));
    }

    let cpu = CpuMeter::start(args.pid());
    let first_post = now_ns();
    let t0 = Instant::now();
    let pad = "x".repeat(args.body_bytes);
    for k in 0..messages {
        if args.rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(k as f64 / args.rate);
            tokio::time::sleep_until(due).await;
        }
        let m = elem("message", NS_CLIENT)
            .with_attr("to", room)
            .with_attr("type", "groupchat")
            .with_attr("id", format!("f{k}"))
            .with_child(elem("body", NS_CLIENT).with_text(format!("fan {} {k} {pad}", now_ns())));
        owner.queue_el(&m)?;
        owner.flush().await?;
    }
    let deadline = sleep(Duration::from_secs_f64(
        args.drain + if args.rate > 0.0 { 0.0 } else { args.duration },
    ));
    tokio::pin!(deadline);
    let mut total = Tally::default();
    let mut reader_errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tokio::select! {
            done = readers_set.join_next() => match done {
                None => break,
                Some(Ok((t, err))) => {
                    total.merge(t);
                    if let Some(e) = err {
                        *reader_errors.entry(e).or_default() += 1;
                    }
                }
                Some(Err(e)) => *reader_errors.entry(format!("task: {e}")).or_default() += 1,
            },
            _ = &mut deadline => { let _ = stop_tx.send(true); }
        }
    }
    let cpu = cpu.read();
    let expected = messages * res.get("joined").and_then(Value::as_u64).unwrap_or(0);
    let got = total.got;
    let span_s = (last_arrival
        .load(Ordering::Relaxed)
        .saturating_sub(first_post)) as f64
        / 1e9;
    res.insert("messages".into(), json!(messages));
    res.insert("deliveries_expected".into(), json!(expected));
    res.insert("deliveries".into(), json!(got));
    res.insert("lost".into(), json!(expected.saturating_sub(got)));
    res.insert("duplicates".into(), json!(total.duplicates));
    res.insert("bad".into(), json!(total.bad));
    res.insert("bounced".into(), json!(total.bounced));
    res.insert("reader".into(), json!("byte-scan"));
    res.insert("scan_checked".into(), json!(total.scan_checked));
    res.insert("scan_mismatches".into(), json!(total.scan_mismatches));
    res.insert("reader_errors".into(), json!(reader_errors));
    res.insert("seconds".into(), json!(round3(span_s)));
    res.insert(
        "deliveries_per_s".into(),
        json!(round1(got as f64 / span_s.max(1e-9))),
    );
    lat_summary(res, total.lat, "delivery_");
    res.extend(cpu);
    owner.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fan_reads_send_time_and_post_number() {
        assert_eq!(parse_fan(b"fan 123 7 xxxx"), Some((123, 7)));
        assert_eq!(parse_fan(b"fan 123 7"), Some((123, 7)));
        assert_eq!(parse_fan(b"fan 123"), None);
        assert_eq!(parse_fan(b"fan x 7 y"), None);
        assert_eq!(parse_fan(b"nope 1 2"), None);
    }

    #[test]
    fn tally_counts_duplicates_and_bad_bodies_apart_from_deliveries() {
        let mut t = Tally::new(100);
        t.body(b"fan 10 0 x", 15, 100);
        t.body(b"fan 10 99 x", 20, 100);
        t.body(b"fan 10 99 x", 25, 100);
        t.body(b"fan 10 100 x", 25, 100);
        t.body(b"hello", 25, 100);
        assert_eq!((t.got, t.duplicates, t.bad), (2, 1, 2));
        assert_eq!(t.lat, vec![5, 10]);
    }

    #[test]
    fn cross_check_flags_a_scan_that_disagrees_with_the_full_parse() {
        let mut t = Tally::new(10);
        let st = b"<message type='groupchat'><body>fan 5 3 x</body></message>";
        t.cross_check(st, scan::child_text(st, b"body"));
        assert_eq!((t.scan_checked, t.scan_mismatches), (1, 0));
        t.cross_check(st, Some(b"fan 5 4 x"));
        assert_eq!((t.scan_checked, t.scan_mismatches), (2, 1));
    }
}
