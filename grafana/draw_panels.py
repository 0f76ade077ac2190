#!/usr/bin/env python3
"""Draws the dashboard's main panels from a real Prometheus into one PNG.

A dev tool (not product code): Grafana's renderer is not available everywhere, so this asks
Prometheus the very queries of grafana/ratelimiter.json (read from the file, Grafana's
variables substituted) over a time range and plots them with matplotlib.

    draw_panels.py --prometheus http://127.0.0.1:9090 --start UNIX --end UNIX --out PNG

grafana/demo_run.sh runs a short real scenario and calls it.
"""
import argparse
import json
import pathlib
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAIN_PANELS = [
    "Request rate by outcome",
    "Rejection ratio per limit",
    "Decision latency p50 / p95 / p99 per door",
    "Redis call latency p50 / p99",
    "Redis errors and timeouts by kind",
    "Failure policy decisions",
]


def query_range(prometheus, expr, start, end, step):
    params = urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step}
    )
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}") as r:
        reply = json.load(r)
    if reply["status"] != "success":
        raise SystemExit(f"{expr}: {reply}")
    return reply["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def panels(dashboard):
    found = {}
    for p in dashboard["panels"]:
        if p.get("targets"):
            found[p["title"]] = p
    return [found[t] for t in MAIN_PANELS]


def draw(args):
    dashboard = json.loads(pathlib.Path(args.dashboard).read_text())
    fig, axes = plt.subplots(3, 2, figsize=(14, 11), constrained_layout=True)
    for ax, panel in zip(axes.flat, panels(dashboard)):
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        scale = 1000.0 if unit == "s" else 1.0
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", args.rate_interval)
                .replace("$instance", ".*")
            )
            for series in query_range(args.prometheus, expr, args.start, args.end, args.step):
                points = [(float(t) - args.start, float(v)) for t, v in series["values"]]
                points = [(t, v * scale) for t, v in points if v == v]  # drop NaN
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, label=legend(target["legendFormat"], series["metric"]))
        ax.set_title(panel["title"])
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel({"s": "ms", "reqps": "per second", "percentunit": "ratio"}.get(unit, ""))
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(args.title)
    fig.savefig(args.out, dpi=80)


def main():
    here = pathlib.Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prometheus", required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--end", type=float, required=True)
    p.add_argument("--step", default="2s")
    p.add_argument("--rate-interval", default="10s")
    p.add_argument("--dashboard", default=str(here / "ratelimiter.json"))
    p.add_argument("--title", default="ratelimiter: the dashboard's main panels")
    p.add_argument("--out", default=str(here / "dashboard.png"))
    draw(p.parse_args())


if __name__ == "__main__":
    main()
