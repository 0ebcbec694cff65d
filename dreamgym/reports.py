"""Transfer reports: the statistics of a batch of returns, the JSON file, its table, its plot.

``summary(returns)`` gives what every evaluation report holds (mean, std, the 95%
confidence interval of the mean by Student's t, min, max, the returns);
``transfer_report`` puts an agent's dream and real parts together with their
ratio (``dreamgym.transfer.score_transfer`` makes one); ``format_transfer`` prints
one and ``plot_transfer`` draws several side by side.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dreamgym._version import __version__
from dreamgym.world_model import atomic_write_text


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: the x with P(T <= x) = p (0.5 < p < 1), ``df`` >= 1."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # Simpson's rule on the density from 0 to x
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + (t[1] - t[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def summary(returns) -> dict[str, Any]:
    """mean, std, ci95 (Student's t, None below 2 episodes), min, max and the returns."""
    r = np.asarray(returns, np.float64)
    mean = float(r.mean())
    ci = None
    if len(r) > 1:
        half = t_quantile(0.975, len(r) - 1) * float(r.std(ddof=1)) / math.sqrt(len(r))
        ci = [mean - half, mean + half]
    return {
        "mean": mean, "std": float(r.std()), "ci95": ci, "min": float(r.min()),
        "max": float(r.max()), "returns": [float(x) for x in r],
    }  # fmt: skip


def transfer_report(meta: dict, dream: dict, real: dict) -> dict[str, Any]:
    """The transfer report: ``meta`` (game, agent, ...), the two parts, and their ratio."""
    for part in (dream, real):
        part["wall_seconds"] = round(part["wall_seconds"], 3)
    ratio = dream["mean"] / real["mean"] if real["mean"] else None
    return {
        "mode": "transfer", **meta, "dream": dream, "real": real, "dream_real_ratio": ratio,
        "dreamgym_version": __version__,
    }  # fmt: skip


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a report as JSON (atomically, its folder created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def read_report(report: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A transfer report (the dict, or its JSON file); a ValueError for any other file."""
    if not isinstance(report, dict):
        try:
            report = json.loads(Path(report).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{report}: not a JSON report ({e})") from None
    if not isinstance(report, dict) or report.get("mode") != "transfer":
        raise ValueError(f"{report if not isinstance(report, dict) else 'report'}: not a "
                         "transfer report (dreamgym evaluate --agent writes them)")  # fmt: skip
    return report


def score_text(*values: float, scale: float | None = None) -> list[str]:
    """``values`` as printed in tables: one decimal, or three where ``scale`` (default: the
    largest magnitude) is below 10 (returns of 0-1, as in MiniGrid)."""
    scale = max(abs(v) for v in values) if scale is None else scale
    return [f"{v:.1f}" if scale >= 10 else f"{v:.3f}" for v in values]


def _interval(part: dict[str, Any]) -> str:
    ci = part.get("ci95")
    mean, std, *bounds = score_text(part["mean"], part["std"], *(ci or []))
    return f"{mean} ± {std}" + (f"  (95% CI {bounds[0]} to {bounds[1]})" if ci else "")


def format_transfer(report: dict[str, Any] | str | os.PathLike) -> str:
    """A printable table of a transfer report (the dict, or its JSON file)."""
    r = read_report(report)
    ratio = r.get("dream_real_ratio")
    rows = [
        ("game", r["game"]),
        ("agent", f"{r['agent']} ({r['kind']}{', ' + r['algo'] if r.get('algo') else ''})"),
        ("observes", r["obs_mode"] + (f", real frames {r['pixels']}" if r.get("pixels") else "")),
        ("episodes", f"{r['episodes']} dreams, {r['episodes']} real"),
        (f"dream, tau {r['dream']['tau']:g}", _interval(r["dream"])),
        ("real game", _interval(r["real"])),
        ("dream / real", "-" if ratio is None else f"{ratio:.2f}"),
        ("wall time", f"{r['dream']['wall_seconds'] + r['real']['wall_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot_transfer(reports, path: str | os.PathLike) -> Path:
    """Draw dream and real scores (means, 95% CI bars) of transfer reports side by side.

    ``reports``: dicts or JSON files. Writes an image (its format from ``path``'s
    suffix, e.g. ``.png``, ``.svg``); needs matplotlib (the ``viz`` extra).
    """
    from dreamgym._deps import require

    require("matplotlib", "viz")
    from matplotlib.figure import Figure

    rows = [read_report(r) for r in reports]
    if not rows:
        raise ValueError("reports: expected at least one transfer report to plot")
    fig = Figure(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    for k, (part, colour) in enumerate((("dream", "tab:purple"), ("real", "tab:green"))):
        means = np.array([r[part]["mean"] for r in rows])
        cis = [r[part].get("ci95") or [m, m] for r, m in zip(rows, means, strict=True)]
        err = np.abs(np.array(cis).T - means)
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, color=colour, label=part)
    ax.set_xticks(x, [Path(r["agent"]).name or r["agent"] for r in rows], rotation=15)
    ax.set_ylabel("mean return (95% CI)")
    ax.set_title(", ".join(sorted({r["game"] for r in rows})))
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


__all__ = [
    "summary", "t_quantile", "transfer_report", "write_report", "read_report",
    "format_transfer", "plot_transfer",
]  # fmt: skip
