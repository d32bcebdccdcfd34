"""The migration benchmark's report: its tables (pure text) and its chart (matplotlib).

Rows are ``stats.summarize``'s. The main table shows, per scenario and policy, the median,
p95 and maximum side by side; the prediction table Segue's prediction error; the guests
table each guest of a several-guest scenario.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPREADS = (("blackout_ms", "blackout ms", "ms"), ("qemu_downtime_ms", "QEMU downtime ms", "ms"),
           ("copy_s", "copy s", "s"))


def fmt(value: float | None, unit: str) -> str:
    """A number for the tables: seconds with 2 decimals, % and ms without; '-' for None."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    if unit == "%":
        return f"{value * 100:+.0f}%"
    return f"{value:.0f}"


def _triple(row: dict[str, Any], key: str, unit: str) -> str:
    return " ".join(f"{fmt(row.get(k), unit):>6}" for k in (key, f"{key}_p95", f"{key}_max"))


def main_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per row: converged and memory-verified counts, then median / p95 / max of the
    blackout, QEMU's downtime and the copy time, the copy time over the physical limit
    (median and worst), the median end-to-end time and the median bytes sent."""
    groups = "".join(f" | {label:^20}" for _, label, _ in SPREADS)
    head1 = f"{'':<10} {'':<9} {'':>5} {'':>6}{groups} | {'x limit':^13} | {'':>7} {'':>6}"
    sub = " ".join(f"{h:>6}" for h in ("median", "p95", "max"))
    head2 = (f"{'scenario':<10} {'policy':<9} {'conv':>5} {'memory':>6}"
             + f" | {sub}" * len(SPREADS) + f" | {'median':>6} {'max':>6} | {'e2e s':>7} "
             f"{'MiB':>6}")
    lines = [head1, head2, "-" * len(head2)]
    for r in rows:
        spreads = "".join(f" | {_triple(r, key, unit)}" for key, _, unit in SPREADS)
        lines.append(
            f"{r['scenario']:<10} {r['policy']:<9} {r['converged']:>2}/{r['runs']:<2} "
            f"{r.get('memory_verified', r['runs'] if r['memory_ok'] else 0):>3}/{r['runs']:<2}"
            f"{spreads} | {fmt(r.get('copy_vs_limit'), 's'):>6} "
            f"{fmt(r.get('copy_vs_limit_max'), 's'):>6} | {fmt(r.get('total_s'), 's'):>7} "
            f"{r['bytes_mib']:>6.0f}")
    return lines


def prediction_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Rows with a prediction (Segue's): relative error of the predicted total time and
    downtime, as the median signed error (bias) and the p95 and maximum of its size, and
    over how many runs; empty when no row has one."""
    mine = [r for r in rows if r.get("total_error_n") or r.get("downtime_error_n")]
    if not mine:
        return []
    head = (f"{'scenario':<10} {'policy':<9} | {'total time error':^27} | "
            f"{'downtime error':^27}")
    sub = f"{'bias':>6} {'p95':>6} {'max':>6} {'runs':>5}"
    lines = [head, f"{'':<10} {'':<9} | {sub} | {sub}", "-" * len(head)]
    for r in mine:
        cells = [" ".join([fmt(r.get(f"{k}_bias"), "%").rjust(6),
                           fmt(r.get(f"{k}_p95"), "%").rjust(6),
                           fmt(r.get(f"{k}_max"), "%").rjust(6),
                           f"{r.get(f'{k}_n', 0):>5}"])
                 for k in ("total_error", "downtime_error")]
        lines.append(f"{r['scenario']:<10} {r['policy']:<9} | {cells[0]} | {cells[1]}")
    return lines


def guests_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Rows of several-guest scenarios: each guest's blackout (median / p95 / max, ms)
    beside the worse guest's that the main table shows; empty when there are none."""
    mine = [r for r in rows if r.get("blackout_ms_each")]
    if not mine:
        return []
    lines = [f"{'scenario':<10} {'policy':<9} {'guest':<9} {'median':>6} {'p95':>6} {'max':>6}"]
    lines.append("-" * len(lines[0]))
    for r in mine:
        for vm, s in r["blackout_ms_each"].items():
            lines.append(f"{r['scenario']:<10} {r['policy']:<9} {vm:<9} "
                         + " ".join(f"{fmt(s[k], 'ms'):>6}" for k in ("median", "p95", "max")))
        lines.append(f"{r['scenario']:<10} {r['policy']:<9} {'worse':<9} "
                     + _triple(r, "blackout_ms", "ms"))
    return lines


def print_report(rows: Sequence[dict[str, Any]]) -> None:
    """The three tables on stdout (the last two only when they have rows)."""
    print("\n".join(main_table(rows)))
    for title, table in (("prediction error (predicted - actual) / actual",
                          prediction_table(rows)),
                         ("each guest's blackout (ms)", guests_table(rows))):
        if table:
            print(f"\n{title}")
            print("\n".join(table))


def plot(rows: Sequence[dict[str, Any]], policies: Sequence[str], path: Path) -> None:
    """Bars of the median blackout and copy time per scenario and policy, each with a line
    up to the worst run (its maximum) and a tick at the p95."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (make bench installs it)")
        return
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    width = 0.8 / max(1, len(policies))
    fig, axes = plt.subplots(1, 2, figsize=(max(13, 2 * len(scenarios)), 4.8))
    for ax, key, label in (
            (axes[0], "blackout_ms", "blackout seen by the prober (ms): median, p95, max"),
            (axes[1], "copy_s", "migration time, QEMU total-time (s): median, p95, max")):
        for i, policy in enumerate(policies):
            found = [next((r for r in rows if r["scenario"] == s and r["policy"] == policy),
                          {}) for s in scenarios]
            xs = [j + i * width for j in range(len(scenarios))]
            med = [r.get(key) or 0 for r in found]
            worst = [max(0.0, (r.get(f"{key}_max") or 0) - m) for r, m in zip(found, med,
                                                                               strict=True)]
            ax.bar(xs, med, width=width, label=policy, yerr=[[0.0] * len(med), worst],
                   capsize=2, error_kw={"lw": 0.8})
            p95 = [r.get(f"{key}_p95") for r in found]
            ax.scatter([x for x, p in zip(xs, p95, strict=True) if p],
                       [p for p in p95 if p], marker="_", s=40, color="black", zorder=3)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))], scenarios)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
