"""`TensorBoardCallback` logs numeric per-round values (skipped without tensorboard)."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from fedfm.errors import FedFMError
from fedfm.report.tensorboard import INSTALL_HINT, TensorBoardCallback


def test_logs_numeric_scalars_at_the_round_step(tmp_path: Path) -> None:
    # Prepare
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = TensorBoardCallback(tmp_path / "tb")
    records = [
        {"round": 1, "accuracy": None, "train_loss": 1.0, "bytes_up": 10, "clients": [1, 2]},
        {"round": 2, "accuracy": 0.5, "train_loss": 0.5, "bytes_up": 20, "ok": True},
    ]

    # Execute
    for record in records:
        callback.on_round_end(record)
    callback.close()

    # Assert
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["accuracy", "bytes_up", "train_loss"]
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 1.0), (2, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(2, 0.5)]


def test_missing_tensorboard_raises_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: make `import tensorboard` fail whether or not it is installed.
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)

    # Execute / Assert
    with pytest.raises(FedFMError, match=r"pip install 'fedfm\[tensorboard\]'"):
        TensorBoardCallback(tmp_path / "tb")
    assert INSTALL_HINT.startswith("TensorBoard logging needs the extra")
