"""`fedfm study init`: what a pre-trained start buys against non-IID data.

The same architecture and adapter start from pre-trained weights or from random
initialisation, and train with FedAvg and FedAdam over an IID split and Dirichlet label skew
at several alphas, plus the centralised reference (pooled data, same budget) for each start;
for text (MiniLM on Rotten Tomatoes) and images (EfficientNet-Lite0 on Fashion-MNIST, or the
MNIST 5k subset where Fashion-MNIST is not installed). The questions come from Nguyen et al.
(ICLR 2023, https://arxiv.org/abs/2206.11488) and Chen et al. (ICLR 2023,
https://arxiv.org/abs/2206.15387).

Each cell of the grid is an ordinary run directory under the study folder, so a half-finished
grid resumes: finished cells are kept, a cell with a checkpoint continues from it, the rest
start fresh. `fedfm.studies.tables` turns the cells into the table and the plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedfm.config import Config, load_config, with_defaults
from fedfm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"
INITS = ("pretrained", "random")
STRATEGIES = ("fedavg", "fedadam")
ALPHAS = (0.1, 0.5, 10.0)
QUICK_ALPHAS = (0.1, 10.0)
CENTRALISED = "centralised"
IID = "iid"


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Attributes:
        task: `text` or `images`.
        init: `pretrained` or `random`.
        strategy: `fedavg`, `fedadam`, or `centralised` (the pooled reference).
        split: `iid`, a Dirichlet alpha as text (`"0.1"`), or `pooled` (centralised).
    """

    task: str
    init: str
    strategy: str
    split: str

    @property
    def name(self) -> str:
        """The cell's directory name, e.g. `text-pretrained-fedavg-a0.1`."""
        split = self.split if self.split in (IID, "pooled") else f"a{self.split}"
        return f"{self.task}-{self.init}-{self.strategy}-{split}"

    @property
    def alpha(self) -> float | None:
        """The Dirichlet alpha, or None (IID or pooled)."""
        return None if self.split in (IID, "pooled") else float(self.split)

    def overrides(self) -> list[str]:
        """The `--set` overrides this cell adds to its task's base config."""
        out = [f"task.pretrained={str(self.init == 'pretrained').lower()}"]
        if self.strategy == CENTRALISED:
            return [*out, "mode=centralised", "partition.name=iid"]
        out.append(f"strategy.name={self.strategy}")
        if self.split == IID:
            return [*out, "partition.name=iid"]
        return [*out, "partition.name=dirichlet", f"partition.alpha={self.split}"]


@dataclass(frozen=True)
class TaskSetting:
    """A task of the study: its base config and the overrides every cell of it gets."""

    task: str
    base: Path
    overrides: tuple[str, ...]


def task_settings(quick: bool, image_dataset: str | None = None) -> list[TaskSetting]:
    """The two tasks: text (the default job) and images (the vision job), sized for `quick`.

    Both drop per-client evaluation and personalisation (the study compares central test
    accuracy). `--quick` shrinks the data, the clients per round and the rounds so the whole
    reduced grid fits on 2 CPU cores within an hour.

    Args:
        quick: the reduced grid.
        image_dataset: `fashion_mnist` or `mnist_5k`; None picks Fashion-MNIST when it is
            installed, else MNIST 5k.
    """
    common = ("eval.federated_every=null", "eval.personalize_steps=0", "partition.min_size=10")
    dataset = image_dataset or _default_image_dataset()
    text = [*common, "partition.num_clients=20", "strategy.clients_per_round=10"]
    images = [*common, f"task.dataset={dataset}"]
    if quick:
        text += ["rounds=6", "data.max_examples=3000", "data.test_size=500"]
        text += ["strategy.clients_per_round=5"]
        images += ["rounds=6", "data.max_examples=2500", "data.test_size=500"]
        images += ["strategy.clients_per_round=5"]
    return [
        TaskSetting("text", CONFIGS / "default.toml", tuple(text)),
        TaskSetting("images", CONFIGS / "vision-efficientnet.toml", tuple(images)),
    ]


def _default_image_dataset() -> str:
    from fedfm.data.images import FASHION_MNIST_DIR

    return "fashion_mnist" if FASHION_MNIST_DIR.is_dir() else "mnist_5k"


def grid(tasks: Sequence[str], quick: bool) -> list[Cell]:
    """Every cell: inits x strategies x (IID + alphas), plus centralised per init."""
    splits = (IID, *(str(a) for a in (QUICK_ALPHAS if quick else ALPHAS)))
    cells = []
    for task in tasks:
        for init in INITS:
            cells.append(Cell(task, init, CENTRALISED, "pooled"))
            cells += [Cell(task, init, s, split) for s in STRATEGIES for split in splits]
    return cells


def cell_config(cell: Cell, setting: TaskSetting, extra: Sequence[str]) -> Config:
    """The cell's config: base file, the task's overrides, the cell's, then the user's."""
    return load_config(setting.base, [*setting.overrides, *cell.overrides(), *extra])


def cell_status(cell_dir: Path, cfg: Config) -> str:
    """`done`, `resume` (a checkpoint to continue from) or `fresh`.

    Raises:
        ConfigError: the directory holds a run of another config (the user changed the
            study's settings: results would mix); names the directory.
    """
    stored = cell_dir / "config.json"
    if stored.exists():
        if with_defaults(json.loads(stored.read_text())) != cfg.model_dump(mode="json"):
            raise ConfigError(
                f"{cell_dir} holds a run of another config: give the study another --out, "
                "or delete that cell to rerun it"
            )
        if (cell_dir / "summary.json").exists():
            return "done"
    if (cell_dir / "checkpoint.json").exists():
        return "resume"
    return "fresh"


Runner = Callable[[Config, Path, bool], object]


def run_grid(
    out: Path,
    cells: Sequence[Cell],
    settings: Sequence[TaskSetting],
    extra: Sequence[str] = (),
    runner: Runner | None = None,
    report: Callable[[int, Cell, str], None] | None = None,
) -> dict[Cell, Path]:
    """Run every cell not yet done, in order; return each cell's directory.

    Args:
        out: the study folder (one run directory per cell).
        cells: the grid.
        settings: the tasks' base configs and overrides.
        extra: the user's overrides, applied to every cell.
        runner: runs a config into a directory (`resume` flag); `fedfm.run.run` by default.
        report: called before each cell with its index, the cell and its status.
    """
    if runner is None:
        from fedfm.run import run as run_job

        def runner(cfg: Config, run_dir: Path, resume: bool) -> object:
            return run_job(cfg, run_dir, resume=resume)

    by_task = {s.task: s for s in settings}
    dirs = {}
    for i, cell in enumerate(cells):
        cfg = cell_config(cell, by_task[cell.task], extra)
        cell_dir = out / cell.name
        status = cell_status(cell_dir, cfg)
        if report is not None:
            report(i, cell, status)
        if status != "done":
            runner(cfg, cell_dir, status == "resume")
        dirs[cell] = cell_dir
    return dirs
