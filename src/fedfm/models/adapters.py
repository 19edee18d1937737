"""The adapter boundary: the only module that imports `peft`.

`make_trainable` turns a backbone into one whose `requires_grad` parameters are exactly
what travels: `lora` and `prompt` through PEFT's functional API (task type SEQ_CLS, so the
classifier head is trained and saved with the adapter), `head` (only the classifier) and
`full` (everything, the baseline for bytes).
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from fedfm.config import AdapterConfig
from fedfm.errors import ConfigError


def make_trainable(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    """Wrap or freeze `model` so that its trainable parameters follow `cfg.method`.

    Args:
        model: a `MeanPoolClassifier` (its head is the module named `classifier`).
        cfg: the adapter section of the config.

    Returns:
        The module to train; only parameters with `requires_grad` change and travel.

    Raises:
        ConfigError: LoRA target modules that the model does not have.
    """
    if cfg.method == "lora":
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in cfg.target_modules if t not in names]
        if missing:
            linear = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear)
                }
            )
            raise ConfigError(
                f"adapter.target_modules: {missing} not in the model "
                f"(linear modules: {', '.join(linear)})"
            )
        lora = LoraConfig(
            task_type="SEQ_CLS",
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
        )
        return _wrap(model, lora)
    if cfg.method == "prompt":
        prompt = PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=cfg.num_virtual_tokens)
        return _wrap(model, prompt)
    if cfg.method == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("classifier."))
        return model
    if cfg.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    raise ConfigError(f"adapter.method: {cfg.method!r} is not one of lora, prompt, head, full")


def _wrap(model: torch.nn.Module, config: LoraConfig | PromptTuningConfig) -> torch.nn.Module:
    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        return get_peft_model(model, config)
