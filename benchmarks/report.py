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
    """A number for the tables: "s" with 2 decimals; "ms" whole; "%" a ratio as a
    percentage; a unit ending in "+" shows the sign; '-' for None."""
    if value is None:
        return "-"
    sign = "+" if unit.endswith("+") else ""
    unit = unit.removesuffix("+")
    if unit == "s":
        return f"{value:{sign}.2f}"
    if unit == "%":
        return f"{value * 100:{sign}.0f}%"
    return f"{value:{sign}.0f}"


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


ERRORS = (("total_error", "total time, relative", "%"),
          ("downtime_error", "downtime, relative", "%"),
          ("downtime_error_ms", "downtime, ms", "ms"))


def prediction_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Rows with a prediction (Segue's): the error of the predicted total time (relative)
    and downtime (relative, and in ms), each as the median signed error (bias), the p95
    and maximum of its size, and over how many runs; empty when no row has one."""
    mine = [r for r in rows if any(r.get(f"{key}_n") for key, _, _ in ERRORS)]
    if not mine:
        return []
    groups = "".join(f" | {label:^27}" for _, label, _ in ERRORS)
    sub = f"{'bias':>6} {'p95':>6} {'max':>6} {'runs':>5}"
    head = f"{'scenario':<10} {'policy':<9}{groups}"
    lines = [head, f"{'':<10} {'':<9}" + f" | {sub}" * len(ERRORS), "-" * len(head)]
    for r in mine:
        cells = "".join(" | " + " ".join([fmt(r.get(f"{key}_bias"), f"{unit}+").rjust(6),
                                          fmt(r.get(f"{key}_p95"), unit).rjust(6),
                                          fmt(r.get(f"{key}_max"), unit).rjust(6),
                                          f"{r.get(f'{key}_n', 0):>5}"])
                        for key, _, unit in ERRORS)
        lines.append(f"{r['scenario']:<10} {r['policy']:<9}{cells}")
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
    for title, table in (("prediction error, predicted - actual (relative: over actual); "
                          "bias: median signed error, p95 and max: of its size",
                          prediction_table(rows)),
                         ("each guest's blackout (ms)", guests_table(rows)),
                         ("encrypted (segue) against plain (no-tls): median and max of the "
                          "runs", tls_table(rows))):
        if table:
            print(f"\n{title}")
            print("\n".join(table))


TLS_KEYS = (("copy_s", "copy s", "s"), ("blackout_ms", "blackout ms", "ms"),
            ("qemu_downtime_ms", "QEMU downtime ms", "ms"),
            ("source_cpu_s", "source QEMU CPU s", "s"))


def tls_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per scenario run both encrypted (policy ``segue``) and plain (``no-tls``): the
    median and maximum of each of ``TLS_KEYS``, TLS then plain, and the ratio of the
    medians; empty when no scenario has both."""
    head = f"{'scenario':<10} {'':<22} {'TLS med':>8} {'max':>8} {'plain med':>9} " \
           f"{'max':>8} {'TLS/plain':>9}"
    lines = [head, "-" * len(head)]
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        tls = next((r for r in rows if r["scenario"] == scenario and r["policy"] == "segue"),
                   None)
        plain = next((r for r in rows
                      if r["scenario"] == scenario and r["policy"] == "no-tls"), None)
        if tls is None or plain is None:
            continue
        for key, label, unit in TLS_KEYS:
            a, b = tls.get(key), plain.get(key)
            ratio = f"{a / b:.2f}" if a and b else "-"
            lines.append(f"{scenario:<10} {label:<22} {fmt(a, unit):>8} "
                         f"{fmt(tls.get(f'{key}_max'), unit):>8} {fmt(b, unit):>9} "
                         f"{fmt(plain.get(f'{key}_max'), unit):>8} {ratio:>9}")
    return lines if len(lines) > 2 else []


def plot(rows: Sequence[dict[str, Any]], policies: Sequence[str], path: Path) -> None:
    """Bars of the median blackout and copy time per scenario and policy, each with a line
    up to the worst run (its maximum) and a tick at the p95; an x where no run converged."""
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
            for x, r in zip(xs, found, strict=True):
                if r and not r["converged"]:  # no run converged: no bar, say so
                    ax.text(x, 0, "x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))], scenarios)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
