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
    logits = model.module(input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    # Assert
    after = model.get_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.module.named_parameters() if n in frozen)


def test_unknown_lora_target_lists_the_linear_modules():
    with pytest.raises(ConfigError, match=r"adapter\.target_modules.*linear modules: .*query"):
        make_trainable(build_model("tiny-bert", 2), AdapterConfig(target_modules=["qkv"]))


def test_lora_on_a_plain_module_trains_the_task_head_too():
    # Prepare: the digits MLP (no transformers), LoRA on fc1/fc2 and its head saved
    from fedfm.tasks.digits import DigitsMLP

    torch.manual_seed(0)
    # Execute
    model = TrainableModel(
        make_trainable(DigitsMLP(8), AdapterConfig(r=2), None, ("head.",), ("fc1", "fc2"))
    )
    # Assert
    names = list(model.params)
    assert any("fc1.lora_A" in n for n in names) and any("fc2.lora_B" in n for n in names)
    assert any("head" in n and "modules_to_save" in n for n in names)
    assert not any("fc1.base_layer" in n for n in names)
