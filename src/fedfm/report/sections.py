"""The sections of a run report, in page order: one small function each, in one registry.

To add a section, write a function `(run, out_dir) -> HTML body | None` and decorate it with
`@register_section(title, keys=..., prefixes=...)`. `keys` (and keys starting with one of
`prefixes`) name the per-round metrics the section shows; every other numeric per-round key
lands in the generic "Other metrics" section, so a new metric appears in reports before
anyone writes a section for it. Returning `None` means "not recorded in this run"; a section
must not raise on missing data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedfm.report import htmlkit as hk
from fedfm.report.fairness import fairness_stats
from fedfm.report.headline import headline, setup, starting_points
from fedfm.report.metrics_io import Record, RunData, has_numbers, is_number, last_with, series
from fedfm.report.plots import (
    Curve,
    Panel,
    client_accuracy_figure,
    curves_figure,
    participation_figure,
    save_png,
    stacked_bars_figure,
)
from fedfm.report.privacy import PRIVACY_PREFIXES, privacy_section
from fedfm.stages import STAGES, StageKind

RenderFn = Callable[[RunData, Path], str | None]

PHASES = ("seconds_fit", "seconds_aggregate", "seconds_eval", "seconds_checkpoint")

# Codec stage metrics: `<stage>/<metric>` (uplink, mean over clients) and
# `downlink/<stage>/<metric>` (the broadcast).
CODECS = tuple(name for name, cls in STAGES.items() if cls.kind == StageKind.COMPRESS)
CODEC_PREFIXES = tuple(p for name in CODECS for p in (f"{name}/", f"downlink/{name}/"))
CODEC_METRICS = ("ratio", "rel_error")  # shown first; other codec metrics follow


@dataclass(frozen=True)
class Section:
    """One titled part of a report.

    Attributes:
        title: the heading.
        keys: the per-round metric keys this section shows (kept out of "Other metrics").
        render: builds the HTML body, writing its PNGs into the given folder, or returns
            `None` when the run did not record its data.
        prefixes: keys starting with one of these are shown here too.
    """

    title: str
    keys: frozenset[str]
    render: RenderFn
    prefixes: tuple[str, ...] = ()

    def shows(self, key: str) -> bool:
        """True when this section shows the per-round `key`."""
        return key in self.keys or key.startswith(self.prefixes)


SECTIONS: list[Section] = []


def register_section(
    title: str, keys: Sequence[str] = (), prefixes: Sequence[str] = ()
) -> Callable[[RenderFn], RenderFn]:
    """Append the decorated render function to `SECTIONS` (page order = registration order)."""

    def decorator(render: RenderFn) -> RenderFn:
        section = Section(title, frozenset(keys), render, tuple(prefixes))
        SECTIONS.append(section)
        return render

    return decorator


def render_sections(run: RunData, out_dir: Path) -> str:
    """The HTML of every registered section for `run`, PNGs written into `out_dir`."""
    parts = []
    for sec in SECTIONS:
        body = sec.render(run, out_dir)
        parts.append(hk.section(sec.title, body or hk.note("Not recorded in this run.")))
    return "\n".join(parts)


def embed(fig: Figure, out_dir: Path, filename: str, alt: str) -> str:
    """Save `fig` as `out_dir/filename` and return an `<img>` inlining the same PNG."""
    return hk.image(save_png(fig, out_dir / filename), alt)


def byte_scale(max_bytes: float) -> tuple[float, str]:
    """A divisor and unit that keep byte counts readable on an axis."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if max_bytes >= 1024**power:
            return float(1024**power), unit
    return 1.0, "B"


@register_section("Headline")
def headline_section(run: RunData, out_dir: Path) -> str:
    """Final and best value of the primary metric, rounds, traffic and wall time."""
    h = headline(run.records, run.metric)
    best = h["best"]
    label = run.metric.replace("_", " ")
    rows = [
        ("setup", setup(run.config) or None),
        (f"final {label}", h["final"]),
        (
            f"best {label}",
            f"{hk.format_value(best)} (round {h['best_round']})" if best is not None else None,
        ),
        ("rounds", h["rounds"]),
        *starting_points(run.records, run.metric),
        ("total bytes up", hk.format_bytes(h["bytes_up"])),
        ("total bytes down", hk.format_bytes(h["bytes_down"])),
        ("total wall time", hk.format_seconds(h["seconds"])),
    ]
    return hk.table(rows)


@register_section("Accuracy and loss", keys=("accuracy", "loss", "train_loss"))
def accuracy_section(run: RunData, out_dir: Path) -> str | None:
    """Central test accuracy, and test and mean client train loss, per round."""
    panels = []
    if has_numbers(run.records, "accuracy"):
        panels.append(Panel("test accuracy", "accuracy", [_curve(run.records, "accuracy")]))
    losses = [_curve(run.records, k) for k in ("loss", "train_loss") if has_numbers(run.records, k)]
    if losses:
        panels.append(Panel("loss", "loss", losses))
    if not panels:
        return None
    return embed(curves_figure(panels), out_dir, "accuracy.png", "accuracy and loss per round")


@register_section("Exact match and perplexity", keys=("exact_match", "perplexity"))
def generation_section(run: RunData, out_dir: Path) -> str | None:
    """Instruction tuning: exact match of greedy answers (overall and per category) and
    response-token perplexity on the central test split, per round (round 0: the base FM)."""
    panels = []
    keys = sorted({k for r in run.records for k in r if k.startswith("exact_match_")})
    em = [_curve(run.records, k, k.removeprefix("exact_match_")) for k in keys]
    if has_numbers(run.records, "exact_match"):
        em.insert(0, _curve(run.records, "exact_match", "all"))
    if em:
        panels.append(Panel("exact match", "exact match", em))
    if has_numbers(run.records, "perplexity"):
        panels.append(Panel("perplexity", "perplexity", [_curve(run.records, "perplexity")]))
    if not panels:
        return None
    return embed(curves_figure(panels), out_dir, "generation.png", "exact match and perplexity")


def _curve(records: Sequence[Record], key: str, label: str | None = None) -> Curve:
    rounds, values = series(records, key)
    return Curve(label or key, rounds, values)


@register_section("Communication", keys=("bytes_up", "bytes_down"))
def communication_section(run: RunData, out_dir: Path) -> str | None:
    """Bytes uploaded and downloaded over all clients, per round and cumulative."""
    keys = [k for k in ("bytes_up", "bytes_down") if has_numbers(run.records, k)]
    if not keys:
        return None
    curves = [_curve(run.records, k) for k in keys]
    cumulative = [Curve(c.label, c.x, np.nancumsum(c.y)) for c in curves]
    scale, unit = byte_scale(max(float(c.y.max()) for c in cumulative))
    per_round_scale, per_round_unit = byte_scale(max(float(np.nanmax(c.y)) for c in curves))
    panels = [
        Panel(
            "per round",
            per_round_unit,
            [Curve(c.label, c.x, c.y / per_round_scale) for c in curves],
        ),
        Panel("cumulative", unit, [Curve(c.label, c.x, c.y / scale) for c in cumulative]),
    ]
    img = embed(curves_figure(panels), out_dir, "bytes.png", "bytes up and down per round")
    budget = (run.config.get("comm") or {}).get("max_bytes")
    stopped = (run.summary or {}).get("stopped")
    notes = [f"Budget: comm.max_bytes = {budget:,} B (up + down)." if is_number(budget) else ""]
    notes.append(f"{stopped}." if stopped else "")
    return img + "".join(hk.note(n) for n in notes if n)


@register_section("Compression", prefixes=CODEC_PREFIXES)
def compression_section(run: RunData, out_dir: Path) -> str | None:
    """The codec stages' metrics per round (uplink: mean over the clients; downlink: the
    broadcast), beside the round's bytes each way."""
    keys = sorted(
        {k for r in run.records for k in r if k.startswith(CODEC_PREFIXES)},
        key=lambda k: (k.startswith("downlink/"), k),
    )
    keys = [k for k in keys if has_numbers(run.records, k)]
    if not keys:
        return None
    names = {k.rsplit("/", 1)[1] for k in keys}
    order = [m for m in CODEC_METRICS if m in names] + sorted(names - set(CODEC_METRICS))
    panels = [
        Panel(
            metric.replace("_", " "),
            metric,
            [_curve(run.records, k, k.rsplit("/", 1)[0]) for k in keys if k.endswith("/" + metric)],
        )
        for metric in order
    ]
    img = embed(curves_figure(panels), out_dir, "compression.png", "codec metrics per round")
    caption = hk.note(
        "ratio: wire bytes of a stage's output over the fp32 bytes of its input; rel_error: "
        "||decoded - input|| / ||input||; bytes: serialised payloads, headers included."
    )
    rows = [
        [r["round"], r.get("bytes_up"), r.get("bytes_down"), *(r.get(k) for k in keys)]
        for r in run.records
        if r["round"] > 0
    ]
    return img + caption + hk.table(rows, ["round", "bytes up", "bytes down", *keys])


# ε and δ per round, clip norm and clipped share, σ, noise source (the body: privacy.py).
register_section("Privacy", prefixes=PRIVACY_PREFIXES)(privacy_section)


@register_section("Per-client accuracy")
def client_accuracy_section(run: RunData, out_dir: Path) -> str | None:
    """Distribution and fairness of accuracy over clients, at the last federated-eval round."""
    record = last_with(run.records, "client_accuracy")
    if record is None:  # no federated evaluation: the personalisation baseline's, if any
        final = (run.summary or {}).get("final_client_accuracy")
        if not isinstance(final, Mapping) or not final:
            return None
        record = {"round": run.records[-1]["round"], "client_accuracy": final}
    accuracy = {str(k): float(v) for k, v in record["client_accuracy"].items() if is_number(v)}
    if not accuracy:
        return None
    server_round = int(record["round"])
    fig = client_accuracy_figure(accuracy, server_round)
    img = embed(fig, out_dir, "client_accuracy.png", "per-client accuracy")
    caption = hk.note(
        f"Round {server_round}, the last with federated evaluation. Weighted mean: by local "
        "test examples; worst 10%: mean of the lowest tenth of clients; std: population."
    )
    table = fairness_table(accuracy, record.get("client_num_examples"), run.summary)
    return img + caption + table


def per_client_values(value: Any) -> dict[str, float] | None:
    """A client id -> number mapping found in a summary entry, or `None`.

    Accepts the mapping itself (`{"3": 0.8, ...}`) or an object holding it under
    `client_accuracy` (`{"mean": 0.7, "client_accuracy": {...}}`).
    """
    if isinstance(value, Mapping) and isinstance(value.get("client_accuracy"), Mapping):
        value = value["client_accuracy"]
    if not isinstance(value, Mapping) or not value:
        return None
    if not all(is_number(v) for v in value.values()):
        return None
    return {str(k): float(v) for k, v in value.items()}


def fairness_table(
    accuracy: Mapping[str, float],
    num_examples: Any,
    summary: Mapping[str, Any] | None,
) -> str:
    """Fairness statistics of the global model, and of a personalized one when summarised.

    Args:
        accuracy: client id -> global-model accuracy at one round.
        num_examples: that round's `client_num_examples` (weights), or `None`.
        summary: `summary.json`; its `local_only` and `personalized_accuracy` per-client
            accuracies are used when present.
    """
    summary = summary or {}
    weights = per_client_values(num_examples)
    local = per_client_values(summary.get("local_only"))
    models = {"global model": accuracy}
    personalized = per_client_values(summary.get("personalized_accuracy"))
    if personalized:
        models["personalized"] = personalized
    columns = ("mean", "weighted_mean", "worst10", "std", "min", "max")
    header = ["model", "clients", "mean", "weighted mean", "worst 10%", "std", "min", "max"]
    if local is not None:
        header.append("share worse than local-only")
    rows = []
    for name, acc in models.items():
        # Weights missing a client would drop it silently: report such a model unweighted.
        w = weights if weights is not None and set(acc) <= set(weights) else None
        loc = local if local is not None and set(acc) & set(local) else None
        stats = fairness_stats(acc, w, loc)
        row: list[Any] = [name, stats["num_clients"], *(stats[c] for c in columns)]
        if local is not None:
            row.append(stats.get("share_worse_than_local"))
        rows.append(row)
    return hk.table(rows, header)


@register_section("Client participation", keys=("num_clients", "num_failures"))
def participation_section(run: RunData, out_dir: Path) -> str | None:
    """Which clients were sampled in each round, and how many sampled clients failed."""
    records = [r for r in run.records if isinstance(r.get("clients"), list)]
    if not records:
        return None
    rounds = np.array([float(r["round"]) for r in records])
    failures = np.array([float(r.get("num_failures") or 0) for r in records])
    fig = participation_figure(rounds, [r["clients"] for r in records], failures)
    return embed(fig, out_dir, "participation.png", "client participation per round")


@register_section("Wall time per phase", keys=("seconds", *PHASES))
def timing_section(run: RunData, out_dir: Path) -> str | None:
    """Seconds spent per round in fit, aggregate, eval and checkpoint (stacked)."""
    phases = [k for k in PHASES if has_numbers(run.records, k)]
    has_total = has_numbers(run.records, "seconds")
    if not phases and not has_total:
        return None
    rounds = np.array([float(r["round"]) for r in run.records])

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if is_number(r.get(key)) else 0.0 for r in run.records])

    parts = {k.removeprefix("seconds_"): column(k) for k in phases}
    if has_total:
        rest = column("seconds") - sum(parts.values(), np.zeros(len(rounds)))
        if not phases or rest.max() > 1e-3:
            parts["other" if phases else "total"] = np.clip(rest, 0.0, None)
    fig = stacked_bars_figure(rounds, parts, "wall time per round", "seconds")
    return embed(fig, out_dir, "wall_time.png", "wall time per phase per round")


@register_section("Other metrics")
def other_metrics_section(run: RunData, out_dir: Path) -> str | None:
    """Every numeric per-round key that no registered section shows."""
    keys = sorted(
        {
            k
            for r in run.records
            for k in r
            if k != "round" and not any(s.shows(k) for s in SECTIONS)
        }
    )
    keys = [k for k in keys if has_numbers(run.records, k)]
    if not keys:
        return None
    panels = [Panel(k, k, [_curve(run.records, k)]) for k in keys]
    fig = curves_figure(panels)
    names = ", ".join(keys)
    return hk.note(f"Per-round metrics without a section of their own: {names}.") + embed(
        fig, out_dir, "other_metrics.png", names
    )


@register_section("Summary")
def summary_section(run: RunData, out_dir: Path) -> str | None:
    """The final figures of `summary.json`; long per-client mappings are summarised."""
    if not run.summary:
        return None
    return hk.mapping_table(_collapse_per_client(run.summary))


def _collapse_per_client(values: Mapping[str, Any], limit: int = 12) -> dict[str, Any]:
    """Replace per-client mappings longer than `limit` by a one-line description."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        flat_numbers = isinstance(value, Mapping) and all(is_number(v) for v in value.values())
        if flat_numbers and len(value) > limit:
            v = np.array(list(value.values()), dtype=np.float64)
            out[key] = (
                f"{len(v)} clients: mean {v.mean():.4f}, min {v.min():.4f}, max {v.max():.4f}"
            )
        elif isinstance(value, Mapping):
            out[key] = _collapse_per_client(value, limit)
        else:
            out[key] = value
    return out


@register_section("Config")
def config_section(run: RunData, out_dir: Path) -> str | None:
    """The run's config, pretty-printed."""
    return hk.pre_json(run.config) if run.config else None
