"""Shared helpers of the benchmark suite: percentiles, load, realistic event data, RSS."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.cli.seed import Seeder
from libs.eventstore import NewEvent

MS = 1000.0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def latency_ms(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds of durations in seconds."""
    return {f"p{p}_ms": round(pct(values, p) * MS, 2) for p in (50, 95, 99)}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


class Timer:
    def __enter__(self) -> Timer:
        self.load_before = load_average()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.load = max(self.load_before, load_average())


@dataclass(frozen=True)
class Row:
    """One event as it would be stored: stream, version and the event itself."""

    stream_id: str
    version: int
    event: NewEvent


def seeded_streams(events: int, seed: int) -> list[tuple[str, list[NewEvent]]]:
    """Whole streams of realistic events (libs/cli/seed.py, the services' own domain), about `events` in all."""
    out: list[tuple[str, list[NewEvent]]] = []
    n = 0
    for _, streams in Seeder(seed=seed).cases():
        out += streams
        n += sum(len(evs) for _, evs in streams)
        if n >= events:
            return out
    raise AssertionError("the seeder is endless")


def rows_of(streams: list[tuple[str, list[NewEvent]]]) -> list[Row]:
    return [Row(sid, v, e) for sid, evs in streams for v, e in enumerate(evs, 1)]


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (from /proc), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def children_of(pid: int) -> list[int]:
    """Every descendant process of pid (from /proc)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
