"""`fedfm export` (PEFT's own format) and `fedfm generate` on a tiny-llama run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fedfm.cli import app
from fedfm.config import load_config
from fedfm.export import chat, export_adapter, load_run_model
from fedfm.run import run
from tests.tasks.test_instruction import TINY_LLAMA


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedit")
    run(load_config(None, [*TINY_LLAMA, "rounds=1", "eval.initial=false"]), out)
    return out


def test_exported_adapter_loads_in_peft_and_gives_the_same_logits(run_dir, tmp_path):
    # Prepare
    from peft import PeftModel

    from fedfm.models.causal_lm import build_causal_lm

    loaded = load_run_model(run_dir)
    ids = torch.tensor([[1, 520, 9531, 198, 6004, 665, 2]])
    # Execute
    out = export_adapter(run_dir, tmp_path / "adapter")
    torch.manual_seed(loaded.cfg.seed)  # the same random base as the run (tiny-llama)
    base = build_causal_lm("tiny-llama")
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    # Assert
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    with torch.no_grad():
        want = loaded.module(input_ids=ids).logits
        got = peft_model(input_ids=ids).logits
    assert torch.equal(want, got)
    # the adapter is the trained one, not a fresh initialisation (LoRA B starts at zero)
    assert any(float(p.abs().sum()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_generate_prints_an_answer(run_dir):
    result = CliRunner().invoke(
        app, ["generate", str(run_dir), "--prompt", "Say hi", "--max-new-tokens", "5"]
    )
    assert result.exit_code == 0, result.output
    loaded = load_run_model(run_dir)
    assert chat(loaded, "Say hi", 5).strip() in result.output


def test_generate_without_an_adapter_fails_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["generate", str(tmp_path), "--prompt", "hi"])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "no trained adapter" in lines[0]
