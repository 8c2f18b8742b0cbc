//! The `muc` scenario: XEP-0045 fan-out. Account FIRST creates a room at `conference.DOMAIN`
//! (kabar: the channel preset, archiving off; other servers keep their defaults for the fields they
//! do not know), N readers (accounts FIRST+1 ..= FIRST+N) join it, then the owner posts messages
//! (`--rate` per second for `--duration` seconds, or flat out in a burst of `--window` × 10 when
//! `--rate 0`). Every reader counts what arrives. Reported: deliveries/s (messages × readers that
//! arrived, over the time from the first post to the last arrival), delivery latency percentiles
//! (post → arrival at a reader), joins/s, and the server's CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use kabar_xml::{elem, Element, ElementExt};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use crate::conn::{self, Conn, Ctx};
use crate::metrics::{lat_summary, now_ns, round1, round3, CpuMeter};
use crate::scenarios::base;
use crate::Args;

const NS_CLIENT: &str = "jabber:client";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_DATA: &str = "jabber:x:data";
const READ_BUF: usize = 16 * 1024;

fn join_presence(room: &str, nick: &str) -> Element {
    elem("presence", NS_CLIENT)
        .with_attr("to", format!("{room}/{nick}"))
        .with_child(
            elem("x", NS_MUC).with_child(elem("history", NS_MUC).with_attr("maxstanzas", "0")),
        )
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
            let mut c = conn::login(&ctx, &user, READ_BUF).await?;
            join(&mut c, &ctx, &room, &format!("r{i}")).await?;
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
    let received = Arc::new(AtomicU64::new(0));
    let last_arrival = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(
        (messages * readers.len() as u64).min(2_000_000) as usize,
    )));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers_set = JoinSet::new();
    for mut c in readers {
        let (received, last_arrival, lat, mut stop) = (
            received.clone(),
            last_arrival.clone(),
            lat.clone(),
            stop_rx.clone(),
        );
        readers_set.spawn(async move {
            let mut got = 0u64;
            let mut mine = Vec::new();
            loop {
                while let Some(ev) = c.events.pop_front() {
                    if let kabar_xml::StreamEvent::Element(el) = ev {
                        let sent = el.get_child("body", NS_CLIENT).and_then(|b| {
                            b.text()
                                .strip_prefix("fan ")
                                .and_then(|t| t.split(' ').next()?.parse::<u64>().ok())
                        });
                        if let Some(sent) = sent {
                            let now = now_ns();
                            mine.push(now.saturating_sub(sent));
                            last_arrival.fetch_max(now, Ordering::Relaxed);
                            got += 1;
                        }
                    }
                }
                if got >= messages {
                    break;
                }
                tokio::select! {
                    r = c.read_some() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
            }
            received.fetch_add(got, Ordering::Relaxed);
            if let Ok(mut l) = lat.lock() {
                l.extend(mine);
            }
            c.close().await;
        });
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
    loop {
        tokio::select! {
            done = readers_set.join_next() => if done.is_none() { break },
            _ = &mut deadline => { let _ = stop_tx.send(true); }
        }
    }
    let cpu = cpu.read();
    let expected = messages * res.get("joined").and_then(Value::as_u64).unwrap_or(0);
    let got = received.load(Ordering::Relaxed);
    let span_s = (last_arrival
        .load(Ordering::Relaxed)
        .saturating_sub(first_post)) as f64
        / 1e9;
    res.insert("messages".into(), json!(messages));
    res.insert("deliveries_expected".into(), json!(expected));
    res.insert("deliveries".into(), json!(got));
    res.insert("seconds".into(), json!(round3(span_s)));
    res.insert(
        "deliveries_per_s".into(),
        json!(round1(got as f64 / span_s.max(1e-9))),
    );
    let lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    lat_summary(res, lat, "delivery_");
    res.extend(cpu);
    owner.close().await;
    Ok(())
}
