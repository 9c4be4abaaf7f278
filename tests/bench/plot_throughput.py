"""Plots tests/bench/throughput.sh's results as SVG files.

    python3 -m venv /tmp/plot && /tmp/plot/bin/pip install -r tests/bench/requirements.txt
    /tmp/plot/bin/python tests/bench/plot_throughput.py RESULTS.jsonl docs/

Writes throughput-vs-concurrency.svg (completed jobs/s over HTTP against the number of
clients, with the raw capacities of the same sitting) and latency-cdf-half-load.svg
(enqueue -> webhook latency at half the saturated throughput, open loop).
"""

import json
import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "platescore"  # stable ids: diffs show real changes
matplotlib.rcParams["svg.fonttype"] = "none"


def main():
    results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rows = [json.loads(line) for line in results.open()]

    def median(kind, key):
        values = [r[key] for r in rows if r["kind"] == kind]
        return statistics.median(values) if values else None

    sweep = sorted((r["concurrency"], r["completed_per_s"]) for r in rows if r["kind"] == "sweep")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([c for c, _ in sweep], [v for _, v in sweep], "o-",
            label="completed over HTTP (loadgen; FP32, the default)")
    for kind, style, name in [("capacity-int8", "--", "R8: INT8 file, in process"),
                              ("capacity-fp32", ":", "R32: FP32 file, in process")]:
        value = median(kind, "alone_img_per_s")
        if value:
            ax.axhline(value, linestyle=style, color="grey", label=f"{name} ({value:.0f}/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([c for c, _ in sweep], [str(c) for c, _ in sweep])
    ax.set_xlabel("clients (closed loop)")
    ax.set_ylabel("jobs/s, enqueue → webhook")
    ax.set_ylim(bottom=0)
    ax.set_title("Completed jobs/s against client concurrency (2 cores)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "throughput-vs-concurrency.svg", metadata={"Date": None})

    half = next(r for r in rows if r["kind"] == "half-load")
    latencies = sorted(half["e2e_raw_ms"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))])
    for p in (0.5, 0.99):
        value = latencies[min(len(latencies) - 1, int(p * len(latencies)))]
        ax.axvline(value, linestyle=":", color="grey")
        ax.annotate(f"p{int(p * 100)} {value:.0f} ms", (value, p), textcoords="offset points",
                    xytext=(5, -12), fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel("enqueue → webhook, ms (log scale)")
    ax.set_ylabel("share of jobs")
    ax.set_title(f"Latency at half load: {half['rate']} jobs/s, open loop, {len(latencies)} jobs")
    fig.tight_layout()
    fig.savefig(out / "latency-cdf-half-load.svg", metadata={"Date": None})


if __name__ == "__main__":
    main()
