"""Trainable parameter counts per adapter method, on the real packaged MiniLM (loads in <1 s)."""

import pytest
import torch

from fedfm.config import AdapterConfig
from fedfm.errors import ConfigError
from fedfm.models.adapters import make_trainable
from fedfm.models.catalogue import build_model
from fedfm.models.trainable import TrainableModel
from fedfm.state import num_params, to_bytes

# Trainable parameters of all-MiniLM-L6-v2 with a 2-way head (pooler not used).
EXPECTED = {
    "lora": 74_498,  # r=8 on query,value: 6 layers x 2 x (8x384 + 384x8) + 384x2 + 2
    "prompt": 16 * 384 + 770,  # 16 virtual tokens + head
    "head": 770,
    "full": 22_566_146,
}


@pytest.fixture(scope="module")
def counts():
    out = {}
    for method in EXPECTED:
        torch.manual_seed(0)
        model = TrainableModel(
            make_trainable(build_model("minilm", 2), AdapterConfig(method=method))
        )
        state = model.get_state()
        out[method] = (num_params(state), len(to_bytes(state)))
    return out


@pytest.mark.parametrize("method", list(EXPECTED))
def test_trainable_counts_on_minilm(counts, method):
    assert counts[method][0] == EXPECTED[method]


def test_full_sends_over_100x_more_than_lora(counts):
    assert counts["full"][1] > 100 * counts["lora"][1]
    # fp32: 4 bytes per parameter plus a small safetensors header
    n, size = counts["lora"]
    assert 4 * n < size < 4 * n + 8_000


def test_prompt_tuning_trains_and_changes_only_prompt_and_head():
    # Prepare
    torch.manual_seed(0)
    model = TrainableModel(
        make_trainable(
            build_model("tiny-bert", 2), AdapterConfig(method="prompt", num_virtual_tokens=4)
        )
    )
    before = model.get_state()
    frozen = {
        n: p.detach().clone() for n, p in model.module.named_parameters() if not p.requires_grad
    }
    ids = torch.randint(0, 1000, (4, 7))
    mask = torch.ones_like(ids)
    opt = torch.optim.SGD(model.params.values(), lr=0.5)
    # Execute
    loss = torch.nn.functional.cross_entropy(model.logits(ids, mask), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    # Assert
    after = model.get_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.module.named_parameters() if n in frozen)


def test_unknown_lora_target_lists_the_linear_modules():
    with pytest.raises(ConfigError, match=r"adapter\.target_modules.*linear modules: .*query"):
        make_trainable(build_model("tiny-bert", 2), AdapterConfig(target_modules=["qkv"]))
