"""The report's Privacy section: (ε, δ) per round, the clip bound and how often it bit, the
noise multiplier, and where the noise came from.

It shows the metrics of every stage of kind clip, noise or mask, `<stage>/<metric>`
(`clip/clipped`, `noise/epsilon`, `adaptive-clip/clip_norm`, `secagg/clipped_fraction`, ...),
and those of the DP-SGD client hook (`dpsgd/epsilon`: the mean over the round's clients).
Registered in `sections.py`, between Compression and Per-client accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedfm.report import htmlkit as hk
from fedfm.report.metrics_io import Record, RunData, has_numbers, is_number, series
from fedfm.report.plots import Curve, Panel, curves_figure, save_png
from fedfm.stages import STAGES, StageKind

PRIVACY_KINDS = (StageKind.CLIP, StageKind.NOISE, StageKind.MASK)
PRIVACY_STAGES = tuple(name for name, cls in STAGES.items() if cls.kind in PRIVACY_KINDS)
PRIVACY_PREFIXES = (*(f"{name}/" for name in PRIVACY_STAGES), "dpsgd/")

# (title, y label, keys): the curves drawn; the table below them lists every key.
PANELS = (
    ("privacy loss ε", "ε", ("noise/epsilon", "dpsgd/epsilon")),
    ("clip norm C", "C", ("noise/clip_norm", "adaptive-clip/clip_norm")),
    ("share of client updates clipped", "share", ("clip/clipped", "adaptive-clip/clipped")),
    ("noise multiplier σ", "σ", ("noise/noise_multiplier",)),
)
SEEDED = "seeded from (seed, round, client): a reproducible simulation (the seed reveals it)"
SECURE = "cryptographic: ChaCha20 keyed by fresh bytes of os.urandom"


def privacy_section(run: RunData, out_dir: Path) -> str | None:
    """Facts of the run's privacy set-up, curves per round, and a table of every privacy
    metric per round; `None` when no privacy stage or hook recorded a metric."""
    keys = sorted({k for r in run.records for k in r if k.startswith(PRIVACY_PREFIXES)})
    keys = [k for k in keys if has_numbers(run.records, k)]
    if not keys:
        return None
    panels = [
        Panel(title, ylabel, [Curve(k, *series(run.records, k)) for k in ks if k in keys])
        for title, ylabel, ks in PANELS
        if any(k in keys for k in ks)
    ]
    img = ""
    if panels:
        png = save_png(curves_figure(panels), out_dir / "privacy.png")
        img = hk.image(png, "privacy loss, clip norm, clipped share and noise per round")
    caption = hk.note(
        "ε: the accountant's after each round, at the δ of the table (noise/delta); "
        "dpsgd/epsilon: record-level, mean over the round's clients; clip/clipped: share of "
        "the round's clients whose update was scaled down; secure: 1 = cryptographic noise."
    )
    rows = [[r["round"], *(r.get(k) for k in keys)] for r in run.records if r["round"] > 0]
    return (
        hk.table(facts(run.records, run.config, run.summary))
        + img
        + caption
        + hk.table(rows, ["round", *keys])
    )


def facts(
    records: Sequence[Record], config: Mapping[str, Any], summary: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """(name, value) rows: the guarantee, accounting, noise, its source, clipping."""
    privacy = config.get("privacy") or {}
    uplink = {s.get("name"): s for s in (config.get("pipeline") or {}).get("uplink") or []}
    rows = []
    last = _last(records, "noise/epsilon")
    if last is not None:
        rows.append(
            (
                "client-level DP",
                f"(ε, δ) = ({last['noise/epsilon']:.4g}, {last.get('noise/delta')}) "
                f"after round {last['round']}",
            )
        )
        target = privacy.get("target_epsilon")
        rows.append(("target ε", "none" if target is None else f"{target:g}"))
        accountant, sampling = privacy.get("accountant", "?"), privacy.get("sampling", "?")
        rows.append(("accounting", f"{accountant} accountant, {sampling} sampling of clients"))
        mode = (uplink.get("noise") or {}).get("mode", "?")
        sigma = last.get("noise/noise_multiplier")
        rows.append(("noise", f"{mode}, σ = {sigma:.4g}" if is_number(sigma) else mode))
    elif any(name in uplink for name in ("clip", "adaptive-clip")):
        rows.append(("client-level DP", "none: clipping without noise gives no guarantee"))
    source = _noise_source(records)
    if source:
        rows.append(("noise source", source))
    for key in ("clip/clipped", "adaptive-clip/clipped"):
        values = series(records, key)[1]
        if len(values):
            bound = "adaptive" if key.startswith("adaptive") else "fixed"
            share = f"{values.mean():.0%} of client updates clipped (mean over rounds)"
            rows.append(("clipping", f"{bound} bound; {share}"))
    dpsgd = _last(records, "dpsgd/epsilon")
    if dpsgd is not None:
        worst = float(series(records, "dpsgd/epsilon")[1].max())
        rows.append(
            (
                "record-level DP-SGD",
                f"ε = {dpsgd['dpsgd/epsilon']:.4g} in round {dpsgd['round']} (mean over its "
                f"clients; highest round mean {worst:.4g}), δ = {privacy.get('delta')}",
            )
        )
    if "secagg" in uplink:
        rows.append(("secure aggregation", "the server saw only the masked sum of updates"))
    stopped = (summary or {}).get("stopped")
    if stopped and last is not None:
        rows.append(("stopped", str(stopped)))
    return rows


def _noise_source(records: Sequence[Record]) -> str | None:
    """Seeded, cryptographic or mixed, from the `noise/secure` and `dpsgd/secure` flags."""
    flags = {
        bool(r[k]) for r in records for k in ("noise/secure", "dpsgd/secure") if is_number(r.get(k))
    }
    if not flags:
        return None
    if len(flags) > 1:
        return "mixed: some rounds seeded, some cryptographic"
    return SECURE if flags.pop() else SEEDED


def _last(records: Sequence[Record], key: str) -> Record | None:
    """The last record where `key` holds a number."""
    return next((r for r in reversed(records) if is_number(r.get(key))), None)
