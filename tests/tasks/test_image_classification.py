"""The vision task on tiny-cnn + MNIST 5k: batches, frozen BatchNorm, adapters, end-to-end runs."""

import json

import numpy as np
import pytest
import torch

from fedfm.config import AdapterConfig, load_config
from fedfm.data.images import ImageExamples
from fedfm.models.adapters import make_trainable
from fedfm.models.trainable import TrainableModel
from fedfm.models.vision import FrozenBatchNorm2d, build_vision_model
from fedfm.run import run
from fedfm.tasks.configs import ImageClassificationConfig
from fedfm.tasks.image_classification import IMAGENET_MEAN, IMAGENET_STD, ImageClassification
from tests.helpers import CONFIGS, crash_and_resume, records, states_equal

VISION_TOML = CONFIGS / "vision-efficientnet.toml"
TINY_VISION = [
    "task.model=tiny-cnn",
    "task.dataset=mnist_5k",
    "task.image_size=16",
    "data.max_examples=200",
    "data.test_size=40",
    "partition.num_clients=4",
    "partition.min_size=10",
    "strategy.clients_per_round=2",
    "client.batch_size=16",
    "eval.batch_size=64",
    "rounds=2",
    "backend.threads=1",
]


def tiny_task(image_size: int = 16) -> ImageClassification:
    cfg = ImageClassificationConfig(model="tiny-cnn", dataset="mnist_5k", image_size=image_size)
    return ImageClassification(cfg, max_examples=64, seed=0)


def test_batches_are_normalised_three_channel_images():
    # Prepare: black and white images (constant, so resizing keeps their value)
    task = tiny_task(image_size=20)
    raw = np.zeros((5, 28, 28), dtype=np.uint8)
    raw[3:] = 255
    examples = ImageExamples(raw, np.arange(5, dtype=np.int64), tuple("0123456789"))
    # Execute
    batches = list(task.batches(examples, np.arange(5), 3, None))
    # Assert
    images = torch.cat([b["images"] for b in batches])
    assert [b["images"].shape for b in batches] == [(3, 3, 20, 20), (2, 3, 20, 20)]
    assert images.dtype == torch.float32 and batches[0]["labels"].dtype == torch.int64
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(images[0, :, 7, 9], -mean / std)
    torch.testing.assert_close(images[4, :, 0, 19], (1 - mean) / std)
    assert torch.equal(torch.cat([b["labels"] for b in batches]), torch.arange(5))


def test_batches_shuffle_with_a_generator_and_keep_uint8_in_memory():
    task = tiny_task()
    examples = task.load_examples()
    idx = np.arange(10, 30)
    shuffled = list(task.batches(examples, idx, 8, np.random.default_rng(0)))
    labels = torch.cat([b["labels"] for b in shuffled]).numpy()
    assert sorted(labels.tolist()) == sorted(examples.labels[idx].tolist())
    assert examples.images.dtype == np.uint8 and examples.images.shape == (64, 28, 28)


def test_frozen_batchnorm_keeps_its_statistics_in_train_mode():
    # Prepare: a BatchNorm with non-trivial statistics, frozen
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    # Execute
    frozen.train()
    y = frozen(x)
    # Assert: running statistics used (as BatchNorm in eval mode), buffers untouched
    assert torch.allclose(y, bn.eval()(x), atol=1e-6)
    assert states_equal(before, frozen.state_dict())
    assert {n for n, _ in frozen.named_parameters()} == {"weight", "bias"}


def test_models_have_only_frozen_batchnorm_and_train_mode_changes_nothing():
    # Prepare
    model = build_vision_model("tiny-cnn", 10, 16)
    x = torch.randn(4, 3, 16, 16)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    # Execute
    out_train = model.train()(x)
    out_eval = model.eval()(x)
    # Assert
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 8
    assert torch.equal(out_train, out_eval)
    assert states_equal(buffers, dict(model.named_buffers()))


def _one_step(method: str) -> tuple[dict, dict, set[str]]:
    """Parameters before and after one AdamW step of `method` on tiny-cnn, and what trains."""
    task = tiny_task()
    examples = task.load_examples()
    torch.manual_seed(0)
    model = TrainableModel(
        make_trainable(
            task.build_model(examples),
            AdapterConfig(method=method, r=2),
            task.peft_task_type,
            task.head_prefixes,
            task.default_target_modules,
        )
    )
    module = model.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    opt = torch.optim.AdamW(model.params.values(), lr=1e-2, weight_decay=0.0)
    module.train()
    for batch in task.batches(examples, np.arange(32), 16, None):
        task.loss(module, batch).backward()
        opt.step()
        opt.zero_grad()
    after = {k: v.clone() for k, v in module.state_dict().items()}
    return before, after, set(model.params)


@pytest.mark.parametrize("method", ["head", "full", "lora"])
def test_each_adapter_trains_exactly_its_parameters(method):
    # Execute
    before, after, trainable = _one_step(method)
    # Assert: every trainable tensor moved (two steps: LoRA's B, then A), nothing else did
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable
    if method == "head":
        assert trainable == {"_fc.weight", "_fc.bias"}
    elif method == "full":
        assert {"_conv_stem.weight", "_bn0.weight", "_bn0.bias", "_fc.weight"} <= trainable
        assert not any("running" in k for k in trainable)
    else:
        lora = {k for k in trainable if "lora_" in k}
        targets = {"_expand_conv", "_project_conv", "_conv_head"}
        assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in lora} == targets
        assert trainable - lora == {
            "base_model.model._fc.modules_to_save.default.weight",
            "base_model.model._fc.modules_to_save.default.bias",
        }


def test_default_lora_targets_work_on_efficientnet_lite0():
    # Prepare: the real architecture, randomly initialised (no weights file needed)
    model = build_vision_model("efficientnet-lite0", 10, 16, pretrained=False)
    # Execute
    lora = TrainableModel(
        make_trainable(
            model, AdapterConfig(r=8), None, ("_fc.",), tiny_task().default_target_modules
        )
    )
    out = lora.module(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    # Assert: 32 pointwise convolutions adapted (+ the 10-way head)
    assert sum(p.numel() for p in lora.params.values()) == 182_272 + 12_810
    assert sum(".lora_A." in n for n in lora.params) == 32
    assert out.shape == (2, 10)


def test_random_efficientnet_never_reads_the_weights_file(monkeypatch):
    from fedfm.models import vision

    def refuse() -> str:
        raise AssertionError("weights file read")

    monkeypatch.setattr(vision, "efficientnet_lite0_file", refuse)
    model = build_vision_model("efficientnet-lite0", 7, 32, pretrained=False)
    assert model._fc.out_features == 7


def test_one_federated_round_end_to_end(tmp_path):
    # Prepare
    cfg = load_config(VISION_TOML, [*TINY_VISION, "rounds=1", "adapter.method=full"])
    # Execute
    final = run(cfg, tmp_path)
    # Assert
    got = records(tmp_path)
    assert [r["round"] for r in got] == [0, 1]
    assert 0 <= got[1]["accuracy"] <= 1 and got[1]["num_clients"] == 2
    assert "_conv_stem.weight" in final
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["primary_metric"] == "accuracy"


def test_crash_then_resume_is_bitwise_identical(tmp_path):
    # Prepare
    cfg = load_config(VISION_TOML, TINY_VISION)
    full = run(cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    # Execute
    resumed = crash_and_resume(cfg, crashed)
    # Assert
    assert states_equal(full, resumed)
    assert [r["round"] for r in records(crashed)] == [0, 1, 2]


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_loads_the_packaged_weights():
    # Prepare
    from fedfm.models.vision import efficientnet_lite0_file

    expected = torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    # Execute
    model = build_vision_model("efficientnet-lite0", 10, 64, pretrained=True)
    # Assert: every backbone tensor is the file's; the head is fresh and 10-way
    state = model.state_dict()
    backbone = [k for k in expected if not k.startswith("_fc.") and "num_batches" not in k]
    assert len(backbone) == 245
    assert all(torch.equal(state[k], expected[k]) for k in backbone)
    assert state["_fc.weight"].shape == (10, 1280)
    model.eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
