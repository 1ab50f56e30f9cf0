"""Run every benchmark, repeated, and write results.json, results.md and PNG plots.

    .venv/bin/python -m bench [--quick] [--only NAME ...] [--repeat R] [--out DIR]

Each benchmark runs ``R`` times, every run in a fresh child process (so RSS figures
and leftovers of one run cannot leak into the next); each figure is reported as
the median with min–max. A comparison is the ratio ours / reference, computed per
run (both sides measured in that run, on this machine) and then taken as the
median. Goals are reported, never enforced: the exit code is 0 whenever every
benchmark ran, 1 if one crashed (its error is in the results).

``--quick`` shrinks every size for a smoke test (a few minutes); its figures are
not comparable with the goals (e.g. 20k routes instead of 100k).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import structlog

from bench.common import figure, goal, goal_met, machine_note, quiet_logs

log = structlog.get_logger("bench")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- adapters for the
# benchmarks written before this runner (each keeps its own CLI); they return the
# figure schema of bench.common.

def bench_routes(quick: bool) -> dict:
    from bench import bench_routes as br

    n = 20_000 if quick else 100_000
    r = br.run(routes=n, repeat=1)
    s, rate = r["seconds"], r["rates_per_s"]
    k = f"{n // 1000}k"
    return {"figures": [
        figure("routes.add", f"Route install: {k} adds", "routes/s", rate["ours_add"],
               rate["ip_add"], "ip -batch", goal("ratio", ">=", 1.0, "≥ 1.0× ip -batch")),
        figure("routes.delete", f"Route install: {k} deletes", "routes/s", rate["ours_delete"],
               rate["ip_delete"], "ip -batch", goal("ratio", ">=", 1.0, "≥ 1.0× ip -batch")),
        figure("routes.resync", f"Route install: resync of {k} unchanged", "s",
               s["ours_resync"], None, "", goal("ours", "<", 0.5, "< 0.5 s")),
        figure("routes.restart_resync", f"Route install: restart read-back of {k}", "s",
               s["ours_restart_resync"]),
    ], "raw": r}


def bench_bgp(quick: bool) -> dict:
    from bench import bench_bgp as bb
    from lab.netns import NetnsSet
    from lab.routers import BgpNeighbor, BirdRouter

    n = 10_000 if quick else 100_000
    owned = NetnsSet()
    wd = tempfile.mkdtemp(prefix="nr-bench-bgp-")
    os.chmod(wd, 0o755)
    tor = None
    try:
        ns = bb.build(owned)
        tor = BirdRouter(ns["tor"], f"{wd}/tor", bb.TOR, bb.TOR_AS,
                         [BgpNeighbor(bb.NODE_BIRD, bb.NODE_AS, hold_time=30),
                          BgpNeighbor(bb.NODE_OURS, bb.NODE_AS, hold_time=30)],
                         static_routes=bb.prefixes(n)).start()
        bird = bb.run_bird(ns, wd, n)
        bb.like_the_daemon()
        ours = bb.run_ours(ns, wd, n)
    finally:
        if tor is not None:
            tor.stop()
        errors = owned.delete_all()
        if errors:
            raise RuntimeError(f"namespace cleanup failed: {errors}")
    k = f"{n // 1000}k"
    return {"figures": [
        figure("bgp.learn_install", f"BGP: session up → {k} learned routes in kernel", "s",
               ours["seconds"], bird["seconds"], "BIRD bgp+kernel",
               goal("ratio", "<=", 1.0, "≤ 1.0× BIRD")),
        figure("bgp.rss", f"BGP: RSS at {k} routes (ExaBGP+relay+daemon vs BIRD)", "MB",
               (ours["rss_exabgp_kb"] + ours["rss_relay_kb"] + ours["rss_daemon_kb"]) / 1024,
               bird["rss_bird_kb"] / 1024, "BIRD"),
    ], "raw": {"routes": n, "bird": bird, "ours": ours},
        "notes": ["bgp: our daemon side is the daemon's pipeline run in the benchmark "
                  "process (Speaker -> LearnedRoutes -> RouteTable, with the daemon's logging "
                  "and GC settings); its RSS includes the benchmark process itself"]}


def bench_ipam(quick: bool) -> dict:
    from bench import bench_ipam as bi

    procs = 8
    r = bi.run(single=300 if quick else 2000, per_proc=100 if quick else 1000, procs=procs)
    return {"figures": [
        figure("ipam.alloc_1", "IPAM: allocations/s, one node", "ops/s", r["alloc_1_per_s"],
               r["cas_1_per_s"], "raw etcd CAS", goal("ours", ">=", 500, "≥ 500/s")),
        figure(f"ipam.alloc_{procs}", f"IPAM: allocations/s, {procs} contending nodes", "ops/s",
               r[f"alloc_{procs}_per_s"], r[f"cas_{procs}_per_s"], "raw etcd CAS",
               goal("ratio", ">=", 0.5, "≥ 0.5× CAS")),
    ], "raw": r}


def bench_pods(quick: bool) -> dict:
    from bench import bench_cni as bc

    pods, par = (50 if quick else 1000), 8
    r = bc.run(pods, par)
    ours, ref = r["noderouter-cni"], r["bridge+host-local"]
    ref_ok = isinstance(ref, dict)
    refname = "bridge+host-local"

    def f(phase: str, key: str, label: str, unit: str, g: dict | None = None) -> dict:
        return figure(f"pods.{phase}.{key}", f"Pods ({pods}): {label}", unit, ours[phase][key],
                      ref[phase][key] if ref_ok else None, refname, g)

    big = pods >= 1000
    figs = [
        f("add_sequential", "total_s", "ADD sequential, total", "s",
          goal("ours", "<", 30, "< 30 s") if big else None),
        f("add_sequential", "p50_ms", "ADD sequential p50", "ms"),
        f("add_sequential", "p99_ms", "ADD sequential p99", "ms", goal("ours", "<", 60, "< 60 ms")),
        f(f"add_parallel{par}", "total_s", f"ADD {par}-parallel, total", "s"),
        f(f"add_parallel{par}", "p99_ms", f"ADD {par}-parallel p99", "ms"),
        f("del_sequential", "total_s", "DEL sequential, total", "s"),
        f("del_sequential", "p99_ms", "DEL sequential p99", "ms"),
        f(f"del_parallel{par}", "total_s", f"DEL {par}-parallel, total", "s"),
    ]
    notes = [] if ref_ok else [f"pods: reference plugins missing: {ref}"]
    return {"figures": figs, "raw": r, "notes": notes}


def _module(name: str) -> Callable[[bool], dict]:
    def run(quick: bool) -> dict:
        import importlib

        return importlib.import_module(f"bench.{name}").bench(quick)
    return run


BENCHMARKS: dict[str, Callable[[bool], dict]] = {
    "routes": bench_routes,
    "bgp": bench_bgp,
    "convergence": _module("bench_convergence"),
    "ipam": bench_ipam,
    "pods": bench_pods,
    "footprint": _module("bench_footprint"),
    "dataplane": _module("bench_dataplane"),
    "scale": _module("bench_scale"),
    "policy": _module("bench_policy"),
}
# Rough wall time of one full-size run (s), for the child's timeout.
TIMEOUTS = {"routes": 600, "bgp": 900, "convergence": 1200, "ipam": 900, "pods": 1800,
            "footprint": 900, "dataplane": 900, "scale": 900, "policy": 1800}


# ----------------------------------------------------------------- child process

_CHILD_PID = 0


def _sigterm(*_args) -> None:
    # The runner stops a child that overran with SIGTERM: unwind so that every
    # benchmark's finally (namespaces by name, daemons by PID) still runs.
    # Only in the benchmark process itself: a fork of it (pyroute2's netns helper
    # inherits this handler and is ended with SIGTERM) must die plainly, or it
    # would unwind the copied stack and run the benchmark's teardown early.
    if os.getpid() != _CHILD_PID:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise SystemExit("SIGTERM: benchmark stopped by the runner (timeout)")


def child(name: str, quick: bool, out: str) -> int:
    global _CHILD_PID
    _CHILD_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm)
    quiet_logs()
    t0 = time.monotonic()
    try:
        res = BENCHMARKS[name](quick)
        res["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported in the results, not a crash
        import traceback

        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-4000:]}
    res["wall_s"] = round(time.monotonic() - t0, 2)
    res["machine"] = machine_note()
    with open(out, "w") as f:
        json.dump(res, f, default=str)
    return 0 if res["ok"] else 1


def run_child(name: str, quick: bool, tmp: str, rep: int) -> dict:
    out = os.path.join(tmp, f"{name}-{rep}.json")
    argv = [sys.executable, "-m", "bench", "--child", name, "--child-out", out]
    if quick:
        argv.append("--quick")
    try:
        # On timeout the child gets SIGTERM first (by its PID) so that its own
        # teardown - namespaces by name, daemons by PID - can run.
        proc = subprocess.Popen(argv, cwd=REPO)
        try:
            proc.wait(TIMEOUTS[name] / (3 if quick else 1) + 60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return {"ok": False, "error": f"timed out after {TIMEOUTS[name]} s"}
        with open(out) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"child run failed: {exc}"}


# ----------------------------------------------------------------- aggregation

def _stats(values: list[float]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def aggregate(runs: list[dict]) -> list[dict]:
    """Per figure id: median/min/max of ours, ref and the per-run ratio."""
    order: list[str] = []
    by_id: dict[str, list[dict]] = {}
    for r in runs:
        for fig in r.get("figures", []):
            if fig["id"] not in by_id:
                order.append(fig["id"])
                by_id[fig["id"]] = []
            by_id[fig["id"]].append(fig)
    rows = []
    for fid in order:
        figs = by_id[fid]
        last = figs[-1]
        ratios = [f["ours"] / f["ref"] for f in figs
                  if f["ours"] is not None and f["ref"] not in (None, 0)]
        ours, ref, ratio = (_stats([f["ours"] for f in figs]), _stats([f["ref"] for f in figs]),
                            _stats(ratios))
        g = last.get("goal")
        met = goal_met(g, ours["median"] if ours else None, ratio["median"] if ratio else None)
        rows.append({"id": fid, "label": last["label"], "unit": last["unit"],
                     "ref_name": last["ref_name"], "ours": ours, "ref": ref, "ratio": ratio,
                     "goal": g, "goal_met": met})
    return rows


def _num(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _cell(s: dict | None, unit: str = "") -> str:
    if not s:
        return "—"
    u = f" {unit}" if unit else ""
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{_num(s['median'])}{u}"
    return f"{_num(s['median'])}{u} ({_num(s['min'])}–{_num(s['max'])})"


def markdown(rows: list[dict], meta: dict, notes: list[str], errors: dict) -> str:
    out = [f"# noderouter benchmarks — {meta['timestamp']}", "",
           f"Command: `{meta['command']}` · repeats: {meta['repeat']} · "
           f"{'QUICK (smoke sizes, not comparable with the goals)' if meta['quick'] else 'full sizes'}"
           f" · {meta['machine']['cpus']} CPUs, kernel {meta['machine']['kernel']}, load avg at "
           f"start {meta['machine']['loadavg'][0]}", "",
           "Median over the repeats, (min–max) when they differ. Ratio = ours / reference, "
           "measured in the same run on the same machine (median of per-run ratios). "
           "This machine is shared with other engineers' test runs: expect variance.", "",
           "| figure | ours | reference | ratio | goal | met? |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{_cell(r['ref'], r['unit'])} ({r['ref_name']})" if r["ref"] else "—"
        ratio = f"{_cell(r['ratio'])}×" if r["ratio"] else "—"
        g = r["goal"]["text"] if r["goal"] else ""
        met = {True: "yes", False: "**no**", None: ""}[r["goal_met"]]
        out.append(f"| {r['label']} | {_cell(r['ours'], r['unit'])} | {ref} | {ratio} | {g} "
                   f"| {met} |")
    if errors:
        out += ["", "## Benchmarks that did not complete", ""]
        out += [f"- **{k}**: {v}" for k, v in errors.items()]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(out) + "\n"


def plots(rows: list[dict], runs: dict[str, list[dict]], outdir: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no_matplotlib", fix="pip install -e '.[bench]' (tox -e bench does it)")
        return []
    written = []
    for name in runs:
        mine = [r for r in rows if r["id"].split(".")[0] == name and r["ours"]]
        if not mine:
            continue
        cols = min(3, len(mine))
        nrows = -(-len(mine) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
        for ax, r in zip(axes.flat, mine, strict=False):
            labels, vals, lo, hi = ["noderouter"], [r["ours"]["median"]], [r["ours"]["min"]], \
                [r["ours"]["max"]]
            if r["ref"]:
                labels.append(r["ref_name"][:18])
                vals.append(r["ref"]["median"])
                lo.append(r["ref"]["min"])
                hi.append(r["ref"]["max"])
            err = [[v - a for v, a in zip(vals, lo, strict=True)],
                   [b - v for v, b in zip(vals, hi, strict=True)]]
            ax.bar(labels, vals, yerr=err, capsize=4, color=["#2b7bba", "#aaaaaa"][:len(vals)])
            ax.set_title(r["label"], fontsize=8, wrap=True)
            ax.set_ylabel(r["unit"], fontsize=8)
            ax.tick_params(labelsize=7)
            if r["goal"] and r["goal"]["on"] == "ours":
                ax.axhline(r["goal"]["value"], color="red", linestyle="--", linewidth=1)
        for ax in list(axes.flat)[len(mine):]:
            ax.axis("off")
        fig.tight_layout()
        path = os.path.join(outdir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    # Latency distributions, where a benchmark kept its samples.
    for name, rs in runs.items():
        series: dict[str, list[float]] = {}
        for r in rs:
            for key, vals in (r.get("raw") or {}).get("samples_ms", {}).items():
                series.setdefault(key, []).extend(vals)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, vals in series.items():
            s = sorted(vals)
            ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=key)
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction ≤ x")
        ax.set_title(f"{name}: latency distribution (all repeats)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = os.path.join(outdir, f"{name}-cdf.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (a few minutes)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                    help=f"run only these: {', '.join(BENCHMARKS)}")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per benchmark (default 3, 1 with --quick)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"),
                    help="results root; a <timestamp>/ folder is made inside")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, a.quick, a.child_out)
    if os.geteuid() != 0:
        print("python -m bench needs root: it builds network namespaces", file=sys.stderr)
        return 2
    repeat = a.repeat or (1 if a.quick else 3)
    names = a.only or list(BENCHMARKS)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(a.out, stamp)
    os.makedirs(outdir, exist_ok=True)
    meta = {"timestamp": stamp, "quick": a.quick, "repeat": repeat, "benchmarks": names,
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_note()}
    runs: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nr-bench-") as tmp:
        for name in names:
            for rep in range(repeat):
                log.warning("bench_start", bench=name, run=f"{rep + 1}/{repeat}")
                res = run_child(name, a.quick, tmp, rep)
                if not res.get("ok"):
                    errors[f"{name} run {rep + 1}"] = res.get("error", "?")
                    log.warning("bench_failed", bench=name, error=res.get("error"),
                                traceback=res.get("traceback", "")[-1500:])
                    continue
                log.warning("bench_done", bench=name, wall_s=res.get("wall_s"))
                runs.setdefault(name, []).append(res)
                notes += res.get("notes", [])
    rows = aggregate([r for rs in runs.values() for r in rs])
    result: dict[str, Any] = {"meta": meta, "table": rows, "errors": errors,
                              "notes": list(dict.fromkeys(notes)), "runs": runs}
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    md = markdown(rows, meta, result["notes"], errors)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(md)
    pngs = plots(rows, runs, outdir)
    print(md)
    print(f"results: {outdir} ({len(pngs)} plots)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
