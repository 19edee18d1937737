"""A finished run's model, outside the round loop: PEFT export and generation.

`load_run_model` rebuilds the run's base model and adapter from its stored config and puts
the last checkpoint's global state into it. `export_adapter` writes the adapter in PEFT's own
format (`adapter_config.json` + `adapter_model.safetensors`), which
`peft.PeftModel.from_pretrained(base_model, folder)` loads without fedfm. `chat` answers a
prompt with an instruction-tuned run's model, streaming tokens as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fedfm.checkpoint import load_checkpoint
from fedfm.errors import CheckpointError, ConfigError
from fedfm.rundir import checkpoint_path

if TYPE_CHECKING:
    import torch

    from fedfm.config import Config
    from fedfm.tasks.base import Task


@dataclass
class RunModel:
    """A run's model with its final global state loaded.

    Attributes:
        cfg: the run's stored config.
        task: the run's task.
        module: the (PEFT-wrapped) model.
        server_round: the round of the checkpoint it holds.
    """

    cfg: Config
    task: Task
    module: torch.nn.Module
    server_round: int


def load_run_model(run_dir: Path) -> RunModel:
    """Rebuild the model of `run_dir` and load its last checkpoint's global state.

    Raises:
        CheckpointError: `run_dir` holds no checkpoint (no trained adapter) or a malformed one.
    """
    from fedfm.build import build_model
    from fedfm.run import stored_config
    from fedfm.strategies.registry import build_hooks
    from fedfm.tasks.registry import build_task

    if not checkpoint_path(run_dir).exists():
        raise CheckpointError(
            f"{run_dir} holds no trained adapter (no {checkpoint_path(run_dir).name}): "
            "give the directory of a finished `fedfm run`"
        )
    cfg = stored_config(run_dir)
    ckpt = load_checkpoint(run_dir)
    task = build_task(cfg)
    # the causal LM needs no examples to be built; a classifier needs them for its head size
    examples: Any = None if task.name == "instruction" else task.load_examples()
    model = build_model(cfg, task, examples, build_hooks(cfg))
    try:
        model.set_state(ckpt.global_state)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir}: the checkpoint does not fit the model: {exc}") from None
    model.module.eval()
    return RunModel(cfg, task, model.module, ckpt.server_round)


def export_adapter(run_dir: Path, out: Path) -> Path:
    """Write the run's adapter in PEFT's format to `out` (created); returns `out`.

    Raises:
        ConfigError: the run trained no PEFT adapter (`adapter.method` head or full).
        CheckpointError: no trained adapter in `run_dir`.
    """
    loaded = load_run_model(run_dir)
    save = getattr(loaded.module, "save_pretrained", None)
    if loaded.cfg.adapter.method not in ("lora", "prompt") or save is None:
        raise ConfigError(
            f"fedfm export writes PEFT adapters (adapter.method lora or prompt); "
            f"this run used adapter.method={loaded.cfg.adapter.method!r}"
        )
    out.mkdir(parents=True, exist_ok=True)
    save(str(out))
    return out


def chat(
    loaded: RunModel, prompt: str, max_new_tokens: int = 128, stream: TextIO | None = None
) -> str:
    """Answer `prompt` greedily with the model's chat template; tokens are written to
    `stream` as they are generated.

    Raises:
        ConfigError: the run is not an instruction-tuning run.
    """
    import numpy as np
    import torch

    from fedfm.tasks.generation import greedy
    from fedfm.tasks.instruction import Instruction

    if not isinstance(loaded.task, Instruction):
        raise ConfigError(
            f"fedfm generate needs an instruction-tuning run (task.name='instruction'); "
            f"this run's task is {loaded.task.name!r}"
        )
    from fedfm.models.causal_lm import load_causal_tokenizer

    tokenizer = load_causal_tokenizer(loaded.task.cfg.model)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
    )
    input_ids = torch.from_numpy(np.asarray([ids], dtype=np.int64))
    streamer = _Streamer(tokenizer, stream) if stream is not None else None
    new = greedy(
        loaded.module,
        input_ids,
        torch.ones_like(input_ids),
        max_new_tokens,
        int(tokenizer.eos_token_id),
        int(tokenizer.pad_token_id),
        streamer=streamer,
    )[0]
    return str(tokenizer.decode(new, skip_special_tokens=True))


class _Streamer:
    """transformers' streamer protocol (`put`, `end`): write decoded text as it grows."""

    def __init__(self, tokenizer: Any, out: TextIO) -> None:
        self.tokenizer, self.out = tokenizer, out
        self.tokens: list[int] = []
        self.shown = 0
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.out.write(text[self.shown :])
        self.out.flush()
        self.shown = len(text)

    def end(self) -> None:
        self.out.write("\n")
        self.out.flush()
