"""What `python -m bench` prints and draws from its results: the table, the
charts (matplotlib, the `bench` extra) and the figures section of bench/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.ingest import log

LARGEST_KEYS = 4  # per-customer keys named in the state-size table
RATIO_DECIMALS_FROM = 0.1  # smaller ratios (against the ceiling) get more decimals

LABELS = {
    "raw": "confluent consume + orjson (ceiling)",
    "quix": "Quix Streams, same state work",
    "naive": "naive Faust, per-event Redis",
    "tierflow": "tierflow worker, every stage",
}

SHORT = {"raw": "raw ceiling", "quix": "Quix Streams", "naive": "naive Faust", "tierflow": "tierflow"}


def _rate(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"failed: {row['error'][:90]}"
    capped = " (capped)" if row.get("capped") else ""
    return f"{row['events_per_s']:,.0f}{capped}"


def _ratio(value: float | None) -> str:
    if not value:
        return "-"
    return f"{value:.2f}x" if value >= RATIO_DECIMALS_FROM else f"{value:.4f}x"


def table(results: dict[str, Any]) -> str:
    """Markdown: the side-by-side rows with ratios, then the other figures."""
    side = results["side_by_side"]
    lines = ["| contender | events/s | tierflow vs it | start s |", "| --- | ---: | ---: | ---: |"]
    for name, row in side["contenders"].items():
        vs = side["ratios"].get(f"tierflow/{name}")
        start = f"{row['startup_s']:.1f}" if row.get("startup_s") is not None else "-"
        lines.append(f"| {LABELS[name]} | {_rate(row)} | {_ratio(vs)} | {start} |")
    size = side.get("state_size", {})
    lines += ["", "| customers | sampled | Redis bytes per customer (mean / p50 / p99) | keys "
              "| largest keys, mean bytes |", "| --- | ---: | ---: | ---: | --- |"]
    for name, row in size.items():
        if isinstance(row, dict):
            label = f"{name} (partial: the run was capped)" if row.get("partial") else name
            largest = sorted(row.get("mean_by_key", {}).items(), key=lambda kv: -kv[1])[:LARGEST_KEYS]
            where = ", ".join(f"`{suffix or '(profile)'}` {n:,}" for suffix, n in largest)
            lines.append(f"| {label} | {row['sampled']} | {row['mean']:,.0f} / {row['p50']:,} / {row['p99']:,} "
                         f"| {row['keys']} | {where} |")
    if size:
        lines.append(f"| shared keys, per customer | - | {size['shared_bytes_per_customer']:,.0f} | - | - |")
    paced = side.get("latency")
    if paced:
        lines += ["", "| latency event -> tier.changes (ms) | count | p50 | p90 | p99 | p99.9 | max |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, key in (("record timestamp", "record_ms"), ("seen by a reader", "seen_ms")):
            s = paced[key]
            if s.get("count"):
                lines.append(f"| {name}, {paced['rate']:,} events/s | {s['count']:,} | {s['p50']:,.0f} | "
                             f"{s['p90']:,.0f} | {s['p99']:,.0f} | {s['p99.9']:,.0f} | {s['max']:,.0f} |")
    sweep = results.get("sweep", {})
    for title, key in (("events per record", "batch"), ("customers", "population")):
        if sweep.get(key):
            lines += ["", f"| tierflow, {title} | events/s |", "| ---: | ---: |"]
            lines += [f"| {int(k):,} | {_rate(row)} |" for k, row in sweep[key].items()]
    scale = results.get("scaling", {})
    if scale.get("workers"):
        lines += ["", f"| workers ({scale['partitions']} partitions) | events/s |", "| ---: | ---: |"]
        lines += [f"| {k} | {_rate(row)} |" for k, row in scale["workers"].items()]
    due = results.get("due_set")
    if due:
        lines += ["", f"| due set ({due['customers']:,} customers, {due['events']:,} events) | events/s "
                  "| customers due at the start | still due at the end |", "| --- | ---: | ---: | ---: |"]
        for name, label in (("baseline", "none made due"), ("all_due", "the whole schedule due at once")):
            row = due["rows"].get(name, {})
            if row.get("error"):
                lines.append(f"| {label} | failed: {row['error'][:90]} | - | - |")
            elif row:
                lines.append(f"| {label} | {_rate(row)} | {row['made_due']:,} of {row['scheduled']:,} "
                             f"| {row['due_left']:,} |")
        lines.append(f"| all due / baseline | {_ratio(due.get('all_due/baseline'))} | | |")
    soak = results.get("soak")
    if soak:
        lines += ["", "| soak at full load | |", "| --- | ---: |"]
        if soak.get("error"):
            lines.append(f"| failed | {soak['error'][:90]} |")
        else:
            lines += [f"| seconds, events/s offered | {soak['seconds']:.0f} s, {soak['rate']:,} |",
                      f"| records processed | {soak['processed_records']:,} |",
                      f"| worker RSS, highest in the first minute (MiB) | {soak['rss_mib_after_settle']} |",
                      f"| worker RSS at the end / max (MiB) | {soak['rss_mib_end']} / {soak['rss_mib_max']} |",
                      f"| RSS slope over the second half (MiB/min) | {soak['rss_mib_per_min_second_half']} |"]
    return "\n".join(lines)


def readme_section(results: dict[str, Any], out: Path) -> str:
    m = results["machine"]
    plan = results["plan"]
    return (
        f"Measured {results['date']} by `make bench` in {results['wall_s']:.0f} s: {m['cpus']} CPUs ({m['cpu']}), "
        f"load {m['load_1m']} at the start, Python {m['python']}, confluent-kafka {m['confluent_kafka']}. "
        f"{plan['events']:,} events of {plan['customers']:,} customers over {plan['days']} days, "
        f"{results['mix']}, one event per record. Charts: `{out.name}/throughput.svg`, "
        f"`{out.name}/latency_cdf.svg`, `{out.name}/soak_rss.svg`; "
        f"every figure in `{out.name}/bench.json`.\n\n{table(results)}"
    )


def charts(results: dict[str, Any], out: Path) -> list[Path]:
    """throughput.svg (side by side, batch size, population), latency_cdf.svg and soak_rss.svg."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no charts: matplotlib is missing (pip install -e '.[bench]')")
        return []
    written: list[Path] = []
    side = results["side_by_side"]["contenders"]
    sweep = results.get("sweep", {})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [n for n, row in side.items() if not row.get("error")]
    bars = axes[0].bar([SHORT[n] for n in names], [side[n]["events_per_s"] for n in names])
    axes[0].bar_label(bars, labels=[f"{side[n]['events_per_s']:,.0f}" for n in names])
    axes[0].set_yscale("log")
    axes[0].set_title("side by side, one event per record")
    for ax, key, label in ((axes[1], "batch", "events per record (--batch)"),
                           (axes[2], "population", "customers")):
        rows = {int(k): r for k, r in sweep.get(key, {}).items() if not r.get("error")}
        ax.plot(list(rows), [r["events_per_s"] for r in rows.values()], marker="o")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel(label)
        ax.set_title(f"tierflow worker vs {label.split(' (')[0]}")
    for ax in axes:
        ax.set_ylabel("events/s")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    written.append(out / "throughput.svg")
    fig.savefig(written[-1])
    plt.close(fig)

    paced = results["side_by_side"].get("latency")
    if paced and paced["cdf_record_ms"]:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for key, label in (("cdf_record_ms", "record timestamp on tier.changes"), ("cdf_seen_ms", "seen by a reader")):
            points = paced[key]
            ax.plot([max(v, 1) for v, _ in points], [f for _, f in points], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("ms from produce to tier.changes")
        ax.set_ylabel("fraction of changes")
        ax.set_title(f"latency CDF at {paced['rate']:,} events/s")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(out / "latency_cdf.svg")
        fig.savefig(written[-1])
        plt.close(fig)
    samples = (results.get("soak") or {}).get("rss_samples")
    if samples:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.plot([t / 60 for t, _ in samples], [rss / 2**20 for _, rss in samples])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("minutes at full load")
        ax.set_ylabel("worker RSS (MiB)")
        ax.set_title(f"worker memory, {results['soak']['rate']:,} events/s offered")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        written.append(out / "soak_rss.svg")
        fig.savefig(written[-1])
        plt.close(fig)
    return written
