"""`fedfm study init` on tiny configs: real runs, resume cell by cell, table and figures."""

from pathlib import Path

import pytest

from fedfm.errors import ConfigError
from fedfm.run import run
from fedfm.studies.init import Cell, TaskSetting, cell_config, grid, run_grid
from fedfm.studies.tables import collect, markdown, write_results

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
SETTING = TaskSetting("text", TINY, ("rounds=2", "partition.num_clients=6"))
CELLS = [
    Cell("text", "pretrained", "centralised", "pooled"),
    Cell("text", "pretrained", "fedavg", "0.1"),
    Cell("text", "pretrained", "fedadam", "iid"),
    Cell("text", "random", "centralised", "pooled"),
    Cell("text", "random", "fedavg", "0.1"),
]


class CountingRunner:
    def __init__(self):
        self.calls = []

    def __call__(self, cfg, run_dir, resume):
        self.calls.append((run_dir.name, resume))
        return run(cfg, run_dir, resume=resume)


def test_grid_shapes():
    full, quick = grid(["text", "images"], quick=False), grid(["text"], quick=True)
    # 2 starts x (centralised + 2 strategies x (IID + 3 alphas)) per task
    assert len(full) == 2 * 2 * (1 + 2 * 4)
    assert len(quick) == 2 * (1 + 2 * 3)
    assert len({c.name for c in full}) == len(full)


def test_cell_overrides_reach_the_config():
    cfg = cell_config(Cell("text", "random", "fedadam", "0.1"), SETTING, ["seed=3"])
    assert cfg.task.pretrained is False and cfg.strategy.name == "fedadam"
    assert cfg.partition.name == "dirichlet" and cfg.partition.alpha == 0.1
    assert cfg.seed == 3 and cfg.rounds == 2
    central = cell_config(Cell("text", "pretrained", "centralised", "pooled"), SETTING, [])
    assert central.mode == "centralised" and central.task.pretrained is True


def test_grid_runs_resumes_and_writes_the_table(tmp_path):
    runner = CountingRunner()
    dirs = run_grid(tmp_path, CELLS, [SETTING], runner=runner)
    assert [name for name, _ in runner.calls] == [c.name for c in CELLS]
    table = write_results(dirs, tmp_path)
    for name in ("study.md", "study.csv", "accuracy_vs_alpha.png", "gap_to_centralised.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = collect(dirs)
    assert len(rows) == len(CELLS)
    central = {r.init: r for r in rows if r.strategy == "centralised"}
    assert all(r.gap_to_centralised == 0 for r in central.values())
    fedavg = next(r for r in rows if r.strategy == "fedavg" and r.init == "random")
    assert fedavg.gap_to_centralised == pytest.approx(central["random"].final - fedavg.final)
    assert "| text | random | fedavg |" in table
    header = markdown(rows).splitlines()[0]
    assert header.index("0.1") < header.index("iid")  # alphas grow to the right, IID last

    # A finished grid runs nothing; a cell cut short continues from its checkpoint.
    runner.calls.clear()
    run_grid(tmp_path, CELLS, [SETTING], runner=runner)
    assert runner.calls == []
    cut = tmp_path / CELLS[1].name
    (cut / "summary.json").unlink()
    run_grid(tmp_path, CELLS, [SETTING], runner=runner)
    assert runner.calls == [(CELLS[1].name, True)]
    assert collect(dirs) == rows  # same seeds, same numbers


def test_a_changed_setting_is_refused_not_mixed(tmp_path):
    run_grid(tmp_path, CELLS[:1], [SETTING])
    with pytest.raises(ConfigError, match="another config"):
        run_grid(tmp_path, CELLS[:1], [SETTING], extra=["client.lr=0.5"])


def test_a_cell_written_before_a_new_setting_existed_counts_as_done(tmp_path):
    # Prepare: a finished cell whose config.json lacks a setting fedfm gained since
    import json

    from fedfm.studies.init import cell_status

    run_grid(tmp_path, CELLS[:1], [SETTING])
    stored = tmp_path / CELLS[0].name / "config.json"
    doc = json.loads(stored.read_text())
    del doc["eval"]["local_only_held_out"]
    stored.write_text(json.dumps(doc))
    cfg = cell_config(CELLS[0], SETTING, [])
    # Execute / Assert: the default stands in for it; another value is still refused
    assert cell_status(stored.parent, cfg) == "done"
    doc["eval"]["local_only_held_out"] = False
    stored.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="another config"):
        cell_status(stored.parent, cfg)
