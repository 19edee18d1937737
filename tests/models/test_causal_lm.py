"""The verified cache behind SmolLM2's dequantised copy: atomic, and rebuilt when damaged."""

from __future__ import annotations

import pytest

from fedfm.models.causal_lm import cached_folder, verify_folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path))
    return tmp_path


class Builder:
    """Writes two files; counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    def __call__(self, out):
        self.calls += 1
        (out / "model.safetensors").write_bytes(b"x" * 1000)
        if self.fail:
            raise RuntimeError("killed while writing")
        (out / "config.json").write_text("{}")


def test_a_verified_folder_is_reused(cache):
    build = Builder()
    first = cached_folder("m", build)
    second = cached_folder("m", build)
    assert first == second == cache / "m" and build.calls == 1
    assert verify_folder(first)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "model.safetensors").write_bytes(b"x" * 999),  # truncated
        lambda d: (d / "model.safetensors").write_bytes(b"y" * 1000),  # same size, other bytes
        lambda d: (d / "manifest.json").unlink(),  # half-written: no manifest
        lambda d: (d / "manifest.json").write_text("{not json"),
        lambda d: (d / "config.json").unlink(),  # a listed file is missing
    ],
)
def test_a_damaged_folder_is_detected_and_rebuilt(cache, damage):
    build = Builder()
    folder = cached_folder("m", build)
    damage(folder)
    assert not verify_folder(folder)
    assert cached_folder("m", build) == folder and build.calls == 2
    assert verify_folder(folder)


def test_a_crash_while_building_leaves_nothing_that_verifies(cache):
    with pytest.raises(RuntimeError, match="killed"):
        cached_folder("m", Builder(fail=True))
    assert not (cache / "m").exists()
    assert [p.name for p in cache.iterdir()] == []  # the temporary folder is gone too
    build = Builder()
    assert verify_folder(cached_folder("m", build)) and build.calls == 1
