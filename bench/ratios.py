#!/usr/bin/env python3
"""One table from kabar-load JSON-lines results: each headline metric per server, and kabar ÷ best peer.
usage: ratios.py results/kabar.jsonl results/ejabberd.jsonl results/prosody.jsonl
Rows are keyed by the `label` run.sh adds (falls back to `scenario`). For "lower is better" metrics a
ratio below 1 means kabar is better; for "higher is better" above 1. gen CPU near 100% means the
generator, not the server, was the limit."""
import json, sys

# label -> [(metric key, description, higher_is_better)]
METRICS = {
    "login": [("logins_per_s", "logins/s", True), ("login_p99_ms", "login p99 ms", False)],
    "idle": [("rss_kb_per_conn", "server RSS KiB per idle conn", False), ("alive_after_hold", "conns alive after hold", True)],
    "chat": [("delivered_per_s", "flat-out delivered msg/s", True), ("p99_ms", "flat-out p99 ms", False)],
    "chat-nostore": [("delivered_per_s", "flat-out msg/s, `<no-store/>` hint", True), ("p99_ms", "flat-out p99 ms, `<no-store/>` hint", False)],
    "chatrate": [("delivered_per_s", "fixed-rate delivered msg/s", True), ("p99_ms", "fixed-rate p99 ms", False),
                 ("p999_ms", "fixed-rate p999 ms", False), ("lost", "fixed-rate lost msgs", False)],
    "chatrate-nostore": [("p99_ms", "fixed-rate p99 ms, `<no-store/>` hint", False), ("p999_ms", "fixed-rate p999 ms, `<no-store/>` hint", False)],
    "signup": [("registrations_per_s", "registrations/s", True), ("chat_before_p99_ms", "chat p99 ms before", False),
               ("chat_during_p99_ms", "chat p99 ms during surge", False)],
    "reconnect": [("all_back_s", "s until all back online", False), ("online_p99_ms", "p99 ms to back online", False)],
    "reconnect-fast": [("all_back_s", "s until all back online (FAST)", False)],
    "chatsweep": [("max_rate_held", "highest total msg/s held (p99 < 50 ms, no loss, ≥ 95 % delivered)", True),
                  ("held_p99_ms", "p99 ms at that rate", False), ("first_failed_rate", "lowest rate that failed", True)],
    "muc": [("deliveries_per_s", "room deliveries/s (kabar channel preset)", True), ("delivery_p99_ms", "room delivery p99 ms (channel)", False)],
    "muc-room": [("deliveries_per_s", "room deliveries/s (plain open room)", True), ("delivery_p99_ms", "room delivery p99 ms (plain room)", False),
                 ("joins_per_s", "room joins/s (plain room)", True), ("lost", "room deliveries lost (plain room)", False)],
}

def fmt(v):
    if v is None: return "–"
    if isinstance(v, float): return f"{v:,.0f}" if abs(v) >= 1000 else (f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}")
    return f"{v:,}" if isinstance(v, int) else str(v)

servers, rows = [], {}
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if not line: continue
        r = json.loads(line)
        s = r.get("server", path)
        if s not in servers: servers.append(s)
        rows.setdefault(r.get("label", r.get("scenario")), {})[s] = r
peers = [s for s in servers if s != "kabar"]
print("| scenario | metric | " + " | ".join(servers) + " | kabar ÷ best peer |")
print("|---|---|" + "---|" * len(servers) + "---|")
for label, metrics in METRICS.items():
    if label not in rows: continue
    by = rows[label]
    for key, desc, higher in metrics:
        vals = {s: (by.get(s) or {}).get(key) for s in servers}
        cells = []
        for s in servers:
            r = by.get(s)
            if r is None: cells.append("–")
            elif r.get("error"): cells.append("error: " + str(r["error"])[:40])
            else:
                gen = r.get("gen_cpu_pct", (r.get("login_phase_cpu") or {}).get("gen_cpu_pct"))
                oth = r.get("other_cpu_pct", (r.get("login_phase_cpu") or r.get("cpu_surge") or {}).get("other_cpu_pct"))
                flag = " ⚠gen" if isinstance(gen, (int, float)) and gen >= 90 else ""
                flag += " ⚠busy" if isinstance(oth, (int, float)) and oth >= 25 else ""
                cells.append(fmt(vals[s]) + flag)
        pv = [vals[p] for p in peers if isinstance(vals.get(p), (int, float)) and not (by.get(p) or {}).get("error")]
        k = vals.get("kabar")
        ratio = "–"
        if isinstance(k, (int, float)) and pv:
            best = max(pv) if higher else min(pv)
            ratio = f"{k / best:.2f}" if best else ("=" if k == best else "∞")
            ratio += " (↑ better)" if higher else " (↓ better)"
        print(f"| {label} | {desc} | " + " | ".join(cells) + f" | {ratio} |")
print()
print("⚠gen: generator CPU ≥ 90% (generator-bound). ⚠busy: other processes used ≥ 25% of a core during the run.")
print()
print("CPU % of one core, server / generator / everything else, per row:")
for label in METRICS:
    if label not in rows: continue
    parts = []
    for s in servers:
        r = rows[label].get(s)
        if not r: continue
        c = r.get("login_phase_cpu") or r.get("cpu_surge") or r
        parts.append(f"{s} {fmt(c.get('server_cpu_pct'))} / {fmt(c.get('gen_cpu_pct'))} / {fmt(c.get('other_cpu_pct'))}")
    print(f"- {label}: " + ", ".join(parts))
