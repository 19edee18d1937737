"""The real SmolLM2-135M-Instruct from its packaged GGUF (marked slow: the first load
dequantises it into the cache, about a minute; later loads take about a second)."""

import time

import pytest
import torch

from fedfm.models.causal_lm import build_causal_lm, load_causal_tokenizer
from fedfm.tasks.generation import generate


@pytest.mark.slow
def test_smollm2_loads_from_its_cache_and_answers():
    # Prepare: the first build fills the cache (or finds it)
    build_causal_lm("smollm2-135m")
    tokenizer = load_causal_tokenizer("smollm2-135m")
    # Execute
    t = time.perf_counter()
    model = build_causal_lm("smollm2-135m")
    seconds = time.perf_counter() - t
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? One word."}],
        add_generation_prompt=True,
        return_dict=False,
    )
    answer = generate(model, tokenizer, [torch.tensor(ids).numpy()], 1, 6)[0]
    # Assert: 134.5 M parameters in fp32, a tied head, a real answer
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "paris" in answer.lower()
    assert seconds < 30  # a cached load, not a second dequantisation
