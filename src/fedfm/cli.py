"""The `fedfm` command: run, models, datasets, show-config, report, compare, export, generate,
distill, synth, study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedfm.errors import FedFMError
from fedfm.rundir import metrics_path

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="TOML config file")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. --set partition.alpha=0.1")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run directory")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory")] = None,
) -> None:
    """Run a federated fine-tuning job (or resume one)."""
    from fedfm.checkpoint import last_round
    from fedfm.config import load_config
    from fedfm.progress import RichProgress
    from fedfm.records import MetricsLog, print_summary
    from fedfm.run import run as run_job
    from fedfm.run import stored_config

    try:
        if resume is not None:
            if config is not None:
                raise FedFMError("give either CONFIG or --resume RUN_DIR, not both")
            cfg = stored_config(resume, set_)
            run_dir = resume
            start = last_round(resume)
        else:
            cfg = load_config(config, set_)
            run_dir = out or Path("runs") / "latest"
            start = 0
        from fedfm.report.headline import setup

        console.print(f"fedfm: {setup(cfg.model_dump())} -> {run_dir}")
        metric = cfg.task.primary_metric
        with RichProgress(cfg.rounds, start, console, metric) as progress:
            run_job(
                cfg,
                run_dir,
                resume=resume is not None,
                progress=progress,
                extra_hooks=[progress.step_hook(cfg.client.max_steps)],
            )
    except FedFMError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: continue with  fedfm run --resume {run_dir}")
        raise typer.Exit(code=130) from None
    print_summary(MetricsLog(run_dir).records(), console, metric)
    console.print(f"metrics: {metrics_path(run_dir)}")


@app.command()
def models() -> None:
    """List the model catalogue."""
    from fedfm.models.catalogue import MODELS

    for spec in MODELS.values():
        console.print(f"{spec.name:12s} {spec.description}")


@app.command()
def datasets() -> None:
    """List the datasets."""
    from fedfm.data.datasets import DATASETS

    for spec in DATASETS.values():
        console.print(f"{spec.name:16s} {spec.description} (natural: {spec.natural_column})")


@app.command("show-config")
def show_config(
    config: Annotated[Path | None, typer.Argument(help="TOML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override key=value")] = None,
) -> None:
    """Print the fully resolved config (defaults filled in) as JSON."""
    from fedfm.config import load_config

    try:
        cfg = load_config(config, set_)
    except FedFMError as exc:
        _fail(exc)
    console.print_json(json.dumps(cfg.model_dump()))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    local_only: Annotated[
        Path | None, typer.Option(help="a local-only baseline run of the same split")
    ] = None,
) -> None:
    """Write RUN_DIR/report/report.html (self-contained, plots embedded) and PNGs."""
    from fedfm.report import write_report

    try:
        path = write_report(run_dir, local_only)
    except FedFMError as exc:
        _fail(exc)
    console.print(f"report: {path}")


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run directories")],
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("compare.html"),
) -> None:
    """Overlay the curves of several runs in one HTML file, with a table of final figures."""
    from fedfm.report import write_compare

    try:
        path = write_compare(run_dirs, out)
    except FedFMError as exc:
        _fail(exc)
    console.print(f"comparison: {path}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    out: Annotated[
        Path | None, typer.Option(help="folder to write (default RUN_DIR/adapter)")
    ] = None,
) -> None:
    """Write the run's adapter in PEFT's format (loadable with PeftModel.from_pretrained)."""
    from fedfm.export import export_adapter
    from fedfm.rundir import ADAPTER_DIR

    try:
        path = export_adapter(run_dir, out or run_dir / ADAPTER_DIR)
    except FedFMError as exc:
        _fail(exc)
    console.print(f"adapter: {path}")


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="an instruction-tuning run directory")],
    prompt: Annotated[str | None, typer.Option(help="the user message to answer")] = None,
    interactive: Annotated[bool, typer.Option(help="keep asking for prompts")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=2048)] = 128,
) -> None:
    """Answer a prompt with the base model and the run's adapter (streamed)."""
    import sys

    from fedfm.export import chat, load_run_model

    if prompt is None and not interactive:
        _fail(FedFMError("give --prompt TEXT or --interactive"))
    try:
        loaded = load_run_model(run_dir)
        if prompt is not None:
            chat(loaded, prompt, max_new_tokens, sys.stdout)
        while interactive:
            try:
                text = input("> ").strip()
            except EOFError:
                break
            if text in ("", "exit", "quit"):
                break
            chat(loaded, text, max_new_tokens, sys.stdout)
    except FedFMError as exc:
        _fail(exc)


@app.command()
def distill(
    run_dir: Annotated[Path, typer.Argument(help="a finished text- or image-classification run")],
    student: Annotated[
        str | None,
        typer.Option(
            help="text: tiny or bert-2layer (default); images: cnn-tiny or cnn-small (default)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="folder to write (default RUN_DIR/distill)")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="passes over the transfer set")] = 3,
    temperature: Annotated[float, typer.Option(min=0.01, help="softmax temperature T")] = 2.0,
) -> None:
    """Distil the run's global model into a small student; compare with the student alone."""
    from fedfm.distill import distill_run

    try:
        folder = out or run_dir / "distill"
        report = distill_run(run_dir, folder, student, epochs, temperature)
    except FedFMError as exc:
        _fail(exc)
    console.print(report.table(), highlight=False)
    console.print(f"report and student: {folder}")


@app.command()
def synth(
    config_or_run: Annotated[Path, typer.Argument(help="a TOML config or a run directory")],
    out: Annotated[Path, typer.Option(help="directory to write the dataset and its card to")],
    per_class: Annotated[
        int | None, typer.Option(min=1, help="candidates generated per class (before filters)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override, e.g. --set synth.generate.temperature=0.7"),
    ] = None,
) -> None:
    """Generate labelled examples with SmolLM2, filter them, write a dataset with a data card."""
    from fedfm.config import load_config
    from fedfm.run import stored_config
    from fedfm.synth.make import synthesize

    overrides = [*(set_ or []), *([f"synth.generate.per_class={per_class}"] if per_class else [])]
    try:
        if config_or_run.is_dir():
            cfg = stored_config(config_or_run, overrides)
        else:
            cfg = load_config(config_or_run, overrides)
        report = synthesize(cfg, out, console)
    except FedFMError as exc:
        _fail(exc)
    console.print(report.table(), highlight=False)
    console.print(f"examples and data card: {out}")


study_app = typer.Typer(no_args_is_help=True, help="FM-for-FL studies (grids of runs).")
app.add_typer(study_app, name="study")


@study_app.command("init")
def study_init(
    quick: Annotated[
        bool, typer.Option(help="the reduced grid (fits 2 CPU cores in an hour)")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="study folder (one run per cell)")] = None,
    task: Annotated[
        list[str] | None, typer.Option(help="text and/or images (default: both)")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for every cell")] = None,
) -> None:
    """Pre-trained vs random start x FedAvg/FedAdam x IID/Dirichlet alphas, + centralised."""
    from fedfm.studies.init import Cell, grid, run_grid, task_settings
    from fedfm.studies.tables import write_results

    tasks = task or ["text", "images"]
    unknown = sorted(set(tasks) - {"text", "images"})
    if unknown:
        _fail(FedFMError(f"--task {', '.join(unknown)}: allowed values are text, images"))
    folder = out or Path("runs") / ("study-init-quick" if quick else "study-init")
    cells = grid(tasks, quick)

    def show(i: int, cell: Cell, status: str) -> None:
        console.print(f"[{i + 1}/{len(cells)}] {cell.name}: {status}", highlight=False)

    try:
        dirs = run_grid(folder, cells, task_settings(quick), set_ or [], report=show)
    except FedFMError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the same command continues the grid in {folder}")
        raise typer.Exit(code=130) from None
    console.print(write_results(dirs, folder))
    console.print(f"table, csv and figures: {folder}")


if __name__ == "__main__":  # pragma: no cover
    app()
