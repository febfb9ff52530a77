"""Targets of issue 6 evaluated against the baseline of the same run, and the Markdown table."""

from __future__ import annotations

from typing import Any

RSS_LIMIT_MB = 300


def _target(n: int, name: str, value: str, baseline: str, ratio: float | None, target: str, ok: bool,
            load: float | None) -> dict[str, Any]:
    return {"n": n, "target": name, "result": value, "baseline": baseline,
            "ratio": None if ratio is None else round(ratio, 3), "required": target, "pass": ok, "load": load}


def evaluate(res: dict[str, Any]) -> list[dict[str, Any]]:
    b, m = res["baseline"], res["measures"]
    out = []
    ca, raw8 = m["command_appends"], b["insert_8conn"]
    r = ca["rate"] / raw8["rate"]
    out.append(_target(1, "command appends, 8 clients (EventStore.append, 1 event per transaction)",
                       f"{ca['rate']:,}/s, p50 {ca['p50_ms']} / p95 {ca['p95_ms']} / p99 {ca['p99_ms']} ms",
                       f"raw INSERT 8 conns {raw8['rate']:,}/s", r, "≥ 0.75 x raw", r >= 0.75, ca["load"]))
    bulk, cp = m["bulk_appends"], b["copy_1000"]
    r = bulk["rate"] / cp["rate"]
    out.append(_target(2, f"bulk appends (append_many, ~{bulk['per_call']:,} events per call)",
                       f"{bulk['rate']:,}/s", f"raw COPY of 1,000 {cp['rate']:,}/s", r, "≥ 0.60 x raw", r >= 0.60,
                       bulk["load"]))
    rb, rd = m["rebuild"], b["read_all_5000"]
    r = rb["rate"] / rd["rate"]
    out.append(_target(3, f"full projection rebuild + swap ({rb['events']:,} events)",
                       f"{rb['rate']:,}/s ({rb['seconds']} s)", f"raw read + orjson {rd['rate']:,}/s", r,
                       "≥ 0.35 x raw (≈ 25,000/s)", r >= 0.35, rb["load"]))
    t, fs = m["projector_tail"], b["faststream_per_message"]
    r = t["rate"] / fs["rate"]
    out.append(_target(4, f"projector tail from Kafka ({t['events']:,} events)", f"{t['rate']:,}/s",
                       f"FastStream per message {fs['rate']:,}/s", r, "≥ 25,000/s and ≥ 4 x FastStream",
                       t["rate"] >= 25000 and r >= 4, t["load"]))
    y = m["read_your_writes"]
    out.append(_target(5, f"command → read model at {y['target_rate']}/s (achieved {y['achieved_rate']}/s, "
                          f"n={y['commands']})",
                       f"p50 {y['p50_ms']} / p95 {y['p95_ms']} / p99 {y['p99_ms']} ms "
                       f"(command alone p50 {y['command']['p50_ms']} / p99 {y['command']['p99_ms']} ms)",
                       f"raw INSERT 1 conn p50 {b['insert_1conn']['p50_ms']} ms", None, "p50 ≤ 25 ms, p99 ≤ 80 ms",
                       y["p50_ms"] <= 25 and y["p99_ms"] <= 80 and y["achieved_rate"] >= 0.9 * y["target_rate"],
                       y["load"]))
    u = m["upstream_kafka"]
    r = u["rate"] / u["produce_rate"]
    out.append(_target(6, f"upstream Stripe events via Kafka ({u['messages']:,} messages, {u['orders']:,} orders)",
                       f"{u['rate']:,}/s", f"aiokafka produce {u['produce_rate']:,}/s", r, "≥ 5,000/s",
                       u["rate"] >= 5000, u["load"]))
    rc = m["reconcile"]
    out.append(_target(7, f"daily reconciliation ({rc['events']:,} events; 1M projected linearly)",
                       f"{rc['seconds']} s, {rc['rate']:,}/s → 1M in {rc['projected_1m_seconds']} s",
                       f"raw read + orjson {rd['rate']:,}/s", rc["rate"] / rd["rate"], "1M in < 90 s",
                       rc["projected_1m_seconds"] < 90, rc["load"]))
    peak = max(rc["peak_rss_mb"], rb["peak_rss_mb"])
    out.append(_target(8, "memory during reconciliation and rebuild (peak RSS of the process)",
                       f"{peak} MB (PostgreSQL's largest backend {rc['postgres_peak_rss_mb']} MB)", "—",
                       peak / RSS_LIMIT_MB, f"≤ {RSS_LIMIT_MB} MB", peak <= RSS_LIMIT_MB, rc["load"]))
    return out


def markdown(res: dict[str, Any]) -> str:
    b = res["baseline"]
    lines = [f"## closeloop bench {'(quick) ' if res['quick'] else ''}— {res['date']}", "",
             f"Machine: {res['machine']}; Python {res['python']}; embedded PostgreSQL (fsync on), Tansu. "
             f"Run took {res['seconds']} s; load average {res['load_at_start']} at start, {res['load_at_end']} at end.",
             "", "| # | target | result | baseline (same run) | ratio | required | pass | load |",
             "|---|---|---|---|---|---|---|---|"]
    for t in res["targets"]:
        ratio = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(f"| {t['n']} | {t['target']} | {t['result']} | {t['baseline']} | {ratio} | {t['required']} | "
                     f"{'PASS' if t['pass'] else 'FAIL'} | {t['load']} |")
    k = b["kafka"]
    lines += ["", "Raw baseline of this run:", "", "| baseline | rate | p50 / p95 / p99 | load |", "|---|---|---|---|"]

    def row(name: str, d: dict[str, Any], rate_key: str = "rate") -> None:
        lat = " / ".join(str(d[f"p{p}_ms"]) + "" for p in (50, 95, 99)) + " ms" if "p50_ms" in d else "—"
        lines.append(f"| {name} | {d[rate_key]:,}/s | {lat} | {d.get('load', '—')} |")

    row("INSERT, 1 event per transaction, 1 connection", b["insert_1conn"])
    row("INSERT, 1 event per transaction, 8 connections", b["insert_8conn"])
    row("same, with a pg_notify in each transaction (diagnostic)", b["insert_8conn_with_notify"])
    row("executemany, 100 per transaction", b["executemany_100"])
    row("COPY of 1,000", b["copy_1000"])
    row("read all by position, batches of 5,000, orjson", b["read_all_5000"])
    row(f"aiokafka produce acks=all, {k['partitions']} partitions", k, "produce_rate")
    row("aiokafka consume, group, batched", k, "consume_rate")
    row("FastStream subscriber, one message per call", b["faststream_per_message"])
    m = res["measures"]
    w = m.get("upstream_webhook")
    lines += ["", f"Seeding ({m['seed']['events']:,} events with read models, `closeloop dev seed`): "
                  f"{m['seed']['rate']:,}/s."]
    lo = m.get("read_your_writes_low_rate")
    if lo:
        lines.append(f"Read-your-writes at {lo['target_rate']}/s (achieved {lo['achieved_rate']}/s, "
                     f"n={lo['commands']}): p50 {lo['p50_ms']} / p95 {lo['p95_ms']} / p99 {lo['p99_ms']} ms "
                     f"(command alone p50 {lo['command']['p50_ms']} ms), load {lo['load']}.")
    if w:
        lines.append(f"Upstream through the signed webhook ({w['requests']:,} requests, {w['senders']} senders): "
                     f"{w['rate']:,}/s, p50 {w['p50_ms']} / p99 {w['p99_ms']} ms.")
    return "\n".join(lines) + "\n"
