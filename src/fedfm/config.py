"""Typed configuration: TOML file -> pydantic models -> `--set a.b=c` overrides.

Each stage (model, adapter, data, partition, client, strategy, eval, backend) gets its own
sub-model with `extra="forbid"`, so an unknown key or a bad value fails once, with one line
naming the key and the allowed values (`ConfigError`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from fedfm.configbase import Section
from fedfm.errors import ConfigError, FedFMError
from fedfm.privacy.configs import PrivacyConfig, check_privacy
from fedfm.stages import STAGES, StageField, check_pipeline, check_secure_aggregation
from fedfm.strategies.configs import DEFAULT_STRATEGY, STRATEGY_CONFIGS, StrategyField
from fedfm.synth.config import SynthConfig, check_synth
from fedfm.tasks.configs import TASKS, TaskField, TextClassificationConfig

AdapterMethod = Literal["lora", "prompt", "head", "full"]
PartitionName = Literal["iid", "dirichlet", "shards", "quantity", "natural"]
OptimizerName = Literal["adamw", "sgd"]
AttackName = Literal["none", "sign-flip", "gaussian", "scale", "label-flip"]
Mode = Literal["federated", "local-only", "centralised"]
BackendName = Literal["inprocess"]


_Section = Section


class AdapterConfig(_Section):
    """What is trainable (and therefore what travels)."""

    method: AdapterMethod = "lora"
    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, min_length=1)  # None: the task's default
    num_virtual_tokens: int = Field(16, ge=1, le=256)


class DataConfig(_Section):
    """The held-out splits of the task's examples.

    `server_examples` holds that many examples of the training pool back from the clients
    (FedDF's unlabelled server set is drawn the same way): a FedAvg run with
    `data.server_examples` equal to FedDF's `strategy.server_examples` trains on exactly the
    clients and examples the FedDF run does.
    """

    test_size: int = Field(1000, ge=10)
    client_test_fraction: float = Field(0.2, ge=0, lt=1)
    max_examples: int | None = Field(None, ge=20)
    server_examples: int = Field(0, ge=0)


class PartitionConfig(_Section):
    """How the training pool is split into clients."""

    name: PartitionName = "natural"
    num_clients: int = Field(50, ge=1)
    column: str | None = None
    alpha: float = Field(0.5, gt=0)
    min_size: int = Field(10, ge=1)
    shards_per_client: int = Field(2, ge=1)
    quantity_sigma: float = Field(1.0, gt=0)


class ClientConfig(_Section):
    """Local training on each client."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-3, gt=0)
    optimizer: OptimizerName = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)


class PipelineConfig(_Section):
    """The update pipelines: `[[pipeline.uplink]]` (client -> server) and
    `[[pipeline.downlink]]` (the broadcast); order matters, invalid orders are refused."""

    uplink: list[StageField] = Field(default_factory=list)
    downlink: list[StageField] = Field(default_factory=list)

    def check(self) -> None:
        """Orders and combinations (see `fedfm.stages.check_pipeline`)."""
        check_pipeline(self.uplink, "pipeline.uplink")
        check_pipeline(self.downlink, "pipeline.downlink")


class CommConfig(_Section):
    """The communication budget: bytes up plus bytes down, summed over rounds (`None`: no
    limit). The run stops cleanly, with a message, before a round that would exceed it."""

    max_bytes: int | None = Field(None, ge=1)


class AttackConfig(_Section):
    """The robustness harness (off by default): a share of clients is malicious."""

    kind: AttackName = "none"
    fraction: float = Field(0.2, ge=0, le=1)
    strength: float = Field(1.0, gt=0)
    seed: int = 0


class EvalConfig(_Section):
    """Central evaluation of the global state."""

    every: int = Field(1, ge=1)
    initial: bool = True  # round 0: evaluate the starting point before any training
    federated_every: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=1)
    personalize_steps: int = Field(0, ge=0)
    # local-only mode: also score every client's own model on the central held-out split
    local_only_held_out: bool = True
    # round 0 of a text-classification run: also the pre-trained encoder as a nearest-class-
    # prototype classifier from this many labelled examples per class (fedfm.zero_shot)
    zero_shot_shots: int = Field(0, ge=0)


class LoggingConfig(_Section):
    """Optional integrations."""

    tensorboard: bool = False


class BackendConfig(_Section):
    """Where client work runs."""

    name: BackendName = "inprocess"
    threads: int | None = Field(None, ge=1)


class Config(_Section):
    """A whole experiment."""

    seed: int = 0
    rounds: int = Field(10, ge=1)
    mode: Mode = "federated"
    task: TaskField = Field(default_factory=TextClassificationConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    strategy: StrategyField = Field(default_factory=lambda: STRATEGY_CONFIGS[DEFAULT_STRATEGY]())
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    comm: CommConfig = Field(default_factory=CommConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        self.strategy.check(self)
        self.pipeline.check()
        check_privacy(self, self.privacy)
        check_secure_aggregation(self)
        check_synth(self)
        _check_server_examples(self)
        if self.eval.zero_shot_shots and not isinstance(self.task, TextClassificationConfig):
            raise ConfigError(
                f"eval.zero_shot_shots needs task.name='text_classification' (got "
                f"{self.task.name!r}; the instruction task's round 0 is zero-shot already)"
            )
        return self


def _check_server_examples(cfg: Config) -> None:
    """FedDF's reserve is `strategy.server_examples`; `data.server_examples` may only repeat it."""
    reserve = getattr(cfg.strategy, "server_examples", None)
    if reserve is not None and cfg.data.server_examples not in (0, reserve):
        raise ConfigError(
            f"data.server_examples={cfg.data.server_examples} differs from "
            f"strategy.server_examples={reserve}: FedDF's server set is the latter; allowed: "
            f"0 or {reserve}"
        )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML file (or the defaults), apply `key=value` overrides, validate.

    Args:
        path: a TOML file; `None` starts from the defaults.
        overrides: strings like `"partition.alpha=0.1"`; values are parsed as TOML
            literals when they parse (numbers, booleans, arrays), else taken as strings;
            `null` unsets an optional setting (e.g. `eval.federated_every=null`).

    Returns:
        The validated `Config`.

    Raises:
        ConfigError: unreadable file, malformed override, unknown key or bad value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain dict into a `Config`, turning pydantic errors into one line."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a run's `config.json`, a checkpoint's) as `model_dump(mode="json")`
    gives it today: settings added to fedfm since it was written hold their defaults, as they
    did in effect then. Returned unchanged when it no longer validates."""
    try:
        return Config.model_validate(stored).model_dump(mode="json")
    except (ValidationError, FedFMError):
        return stored


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `raw[a][b] = value` from `"a.b=value"` (value parsed as a TOML literal if it can be).

    Raises:
        ConfigError: the item has no `=`, or walks through a value as if it were a section.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. partition.alpha=0.1), got {item!r}")
    value: Any
    if text.strip() == "null":  # TOML has no null: unset an optional setting
        value = None
    else:
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    parts = _strip_tags(err["loc"])
    loc = ".".join(str(p) for p in parts) or "config"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    if err["type"] == "union_tag_not_found":  # only stage entries have no default name
        return f"{loc}.name: missing (one of {', '.join(STAGES)}){more}"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"{loc}.name: {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}{more}"
    if err["type"] == "extra_forbidden":
        section = _section_for(tuple(err["loc"][:-1]))
        allowed = ", ".join(section.model_fields) if section else ""
        return f"{loc}: unknown key (allowed: {allowed})"
    if err["type"] == "value_error" and not parts:  # a cross-section check names its keys
        return str(err["msg"]).removeprefix("Value error, ") + more
    got = err.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}{got_text}{more}"


def _strip_tags(loc: tuple[Any, ...]) -> list[Any]:
    """Drop the union tags pydantic puts in a location (`task.digits.hidden` -> `task.hidden`)."""
    return [p for p in loc if not (isinstance(p, str) and p in _TAGS)]


def _section_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class at `loc` (list indices skipped, union tags followed)."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int):
            continue
        if part in _TAGS:
            model = _TAGS[part]
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            model = None  # a union or a list: a tag or an index follows
    return model


_TAGS: dict[str, type[BaseModel]] = {**TASKS, **STAGES, **STRATEGY_CONFIGS}
