"""The run directory's layout: every file name a run writes, in one place."""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.json"  # the validated config the run started with
METRICS = "metrics.jsonl"  # one RoundRecord per line
SUMMARY = "summary.json"  # the final figures
CHECKPOINT = "checkpoint.json"  # the commit point of the last checkpoint
CHECKPOINT_TENSORS = "checkpoint-{round}.safetensors"  # named by checkpoint.json
REPORT_DIR = "report"  # report.html and its PNGs
REPORT = "report.html"
TENSORBOARD = "tensorboard"
DATA_CARD = "data_card.json"  # where the examples came from, templates, counts, split sizes
ADAPTER_DIR = "adapter"  # `fedfm export`'s default: the adapter in PEFT's own format


def config_path(run_dir: Path) -> Path:
    """`RUN_DIR/config.json`."""
    return Path(run_dir) / CONFIG


def data_card_path(run_dir: Path) -> Path:
    """`RUN_DIR/data_card.json`."""
    return Path(run_dir) / DATA_CARD


def metrics_path(run_dir: Path) -> Path:
    """`RUN_DIR/metrics.jsonl`."""
    return Path(run_dir) / METRICS


def summary_path(run_dir: Path) -> Path:
    """`RUN_DIR/summary.json`."""
    return Path(run_dir) / SUMMARY


def checkpoint_path(run_dir: Path) -> Path:
    """`RUN_DIR/checkpoint.json`."""
    return Path(run_dir) / CHECKPOINT
