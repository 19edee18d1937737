"""The adapter boundary: the only module that imports `peft` (and only when it is needed).

`make_trainable` turns a backbone into one whose `requires_grad` parameters are exactly
what travels: `lora` and `prompt` through PEFT (with the task's PEFT task type, so a
sequence classifier's head is trained and saved with the adapter; for a plain module the
task's head is added to `modules_to_save`), `head` (only the task head) and `full`
(everything, the baseline for bytes).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from fedfm.config import AdapterConfig
from fedfm.errors import ConfigError


def make_trainable(
    model: torch.nn.Module,
    cfg: AdapterConfig,
    task_type: str | None = "SEQ_CLS",
    head_prefixes: Sequence[str] = ("classifier.",),
    default_targets: Sequence[str] = ("query", "value"),
) -> torch.nn.Module:
    """Wrap or freeze `model` so that its trainable parameters follow `cfg.method`.

    Args:
        model: the task's backbone with its head.
        cfg: the adapter section of the config.
        task_type: PEFT's task type (`None` for a plain `torch.nn.Module`).
        head_prefixes: parameter name prefixes of the head.
        default_targets: LoRA target modules when `cfg.target_modules` is unset.

    Returns:
        The module to train; only parameters with `requires_grad` change and travel.

    Raises:
        ConfigError: LoRA target modules that the model does not have, or prompt tuning of
            a model that is not a transformer.
    """
    heads = [p.rstrip(".") for p in head_prefixes]
    if cfg.method == "lora":
        from peft import LoraConfig

        targets = list(cfg.target_modules or default_targets)
        _check_targets(model, targets)
        kwargs: dict[str, Any] = {} if task_type else {"modules_to_save": heads}
        lora = LoraConfig(
            task_type=task_type,
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            **kwargs,
        )
        return _wrap(model, lora)
    if cfg.method == "prompt":
        if task_type is None:
            raise ConfigError("adapter.method='prompt' needs a transformer task (not this task)")
        from peft import PromptTuningConfig

        prompt = PromptTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens)
        return _wrap(model, prompt)
    if cfg.method == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(tuple(head_prefixes)))
        return model
    if cfg.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    raise ConfigError(f"adapter.method: {cfg.method!r} is not one of lora, prompt, head, full")


def _check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
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


def _wrap(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    from peft import get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        wrapped: torch.nn.Module = get_peft_model(model, config)
        return wrapped
