"""Small helpers shared by the benchmark modules (no I/O beyond /proc).

A benchmark's ``bench(quick)`` returns ``{"figures": [Figure...], "raw": ..., "notes": [...]}``;
``python -m bench`` repeats it, takes medians and writes the table. A figure is a plain
dict so it survives JSON between the runner and its child processes:

    id        stable key, e.g. "routes.add_rate"
    label     what the table shows
    unit      "routes/s", "s", "ms", "Mbit/s", "MB", "%", ...
    ours      our measurement
    ref       the reference's measurement in the same run (None if there is none)
    ref_name  what the reference is ("ip -batch", "BIRD", ...)
    goal      None or {"on": "ours"|"ratio", "op": ">="|"<="|"<", "value": v, "text": "..."}

ratio is always ours / ref; the goal says which direction is good.
"""

from __future__ import annotations

import logging
import os

import structlog


def quiet_logs() -> None:
    """Benchmarks print a table; per-route debug logging would be noise (and cost)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def figure(id: str, label: str, unit: str, ours: float | None, ref: float | None = None,
           ref_name: str = "", goal: dict | None = None) -> dict:
    return {"id": id, "label": label, "unit": unit, "ours": ours, "ref": ref,
            "ref_name": ref_name, "goal": goal}


def goal(on: str, op: str, value: float, text: str) -> dict:
    assert on in ("ours", "ratio") and op in (">=", "<=", "<", ">")
    return {"on": on, "op": op, "value": value, "text": text}


def goal_met(g: dict | None, ours: float | None, ratio: float | None) -> bool | None:
    if not g:
        return None
    v = ours if g["on"] == "ours" else ratio
    if v is None:
        return None
    return {">=": v >= g["value"], "<=": v <= g["value"], "<": v < g["value"],
            ">": v > g["value"]}[g["op"]]


def proc_status_kb(pid: int | None, field: str = "VmRSS") -> int:
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of one process (not its children), in seconds."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def machine_note() -> dict:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "kernel": os.uname().release}
