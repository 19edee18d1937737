"""Client state stores: in memory and on disk hold the same thing and round-trip it."""

import pytest
import torch

from fedfm.client.state import DirectoryStore, InMemoryStore
from fedfm.errors import CheckpointError


@pytest.fixture(params=["memory", "directory"])
def store(request, tmp_path):
    return InMemoryStore() if request.param == "memory" else DirectoryStore(tmp_path / "clients")


def test_get_put_delete(store):
    assert store.get(3, "scaffold.control") is None
    store.put(3, "scaffold.control", {"a.weight": torch.ones(2)})
    store.put(3, "ef.residual", {"a.weight": torch.zeros(2)})
    assert torch.equal(store.get(3, "scaffold.control")["a.weight"], torch.ones(2))
    store.delete(3, "scaffold.control")
    assert store.get(3, "scaffold.control") is None
    assert store.get(3, "ef.residual") is not None
    store.delete(7, "nothing")  # absent: no error


def test_state_dict_round_trips_between_kinds(store, tmp_path):
    store.put(0, "k", {"w": torch.arange(3.0)})
    store.put(12, "k", {"w": torch.ones(3), "b": torch.zeros(1)})
    flat = store.state_dict()
    for other in (InMemoryStore(), DirectoryStore(tmp_path / "other")):
        other.load_state_dict(flat)
        assert other.state_dict().keys() == flat.keys()
        assert all(torch.equal(other.state_dict()[k], v) for k, v in flat.items())


def test_bad_keys_and_entries_are_refused(store):
    with pytest.raises(ValueError, match="must match"):
        store.put(0, "a/b", {"w": torch.ones(1)})
    with pytest.raises(CheckpointError, match="<client>/<key>/<name>"):
        store.load_state_dict({"x/k/w": torch.ones(1)})


def test_directory_store_keeps_nothing_in_memory(tmp_path):
    a = DirectoryStore(tmp_path)
    a.put(5, "k", {"w": torch.ones(2)})
    b = DirectoryStore(tmp_path)  # a new process on the same directory
    assert torch.equal(b.get(5, "k")["w"], torch.ones(2))
    assert b.client_ids() == [5]
