"""`ClientRuntime`: the one client program. Every backend drives it; none re-implements it.

It is built once per process (the in-process backend, a Ray actor, a torchrun rank, a
deployed client) and answers verbs that never raise: `fit` (train from a state, reply with
the encoded update), `evaluate` (metrics on the local test split, optionally after a few
personalisation steps) and `secagg_step` (one secure-aggregation message, answered by the
uplink's MASK stage). The algorithm-specific parts are hooks, the
transformations of the update are pipeline stages, the problem is a Task.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence

from fedfm.client.hooks import ClientHook, FitContext
from fedfm.client.state import ClientStateStore
from fedfm.client.train import local_train, make_optimizer
from fedfm.config import ClientConfig
from fedfm.data.federated import ClientData
from fedfm.memory import trim, tune_allocator
from fedfm.messages import EvalReply, EvalTask, Failure, FailureKind, FitReply, FitTask
from fedfm.models.trainable import TrainableModel
from fedfm.pipeline import Pipeline, mask_stage
from fedfm.state import State, subtract
from fedfm.tasks.base import Examples, Task

PERSONALIZE_SALT = 0xFE  # personalisation steps draw from (seed, round, client, salt)
logger = logging.getLogger(__name__)


class ClientRuntime:
    """The client program.

    Args:
        task: the problem (batches, loss, metrics).
        examples: the examples the clients' index arrays point into.
        model: the model whose trainable state is swapped per client.
        shards: client id -> its train/test indices (the data this process can serve).
        client_cfg: local training settings.
        uplink: the uplink pipeline (encode side).
        hooks: the client halves of the algorithm, run in this order before training and
            in reverse order after it.
        store: per-client persistent state.
        seed: the run's seed; client randomness is derived from (seed, round, client).
        eval_batch_size: batch size for local evaluation.
    """

    def __init__(
        self,
        task: Task,
        examples: Examples,
        model: TrainableModel,
        shards: Mapping[int, ClientData],
        client_cfg: ClientConfig,
        uplink: Pipeline,
        hooks: Sequence[ClientHook],
        store: ClientStateStore,
        seed: int,
        eval_batch_size: int = 256,
    ) -> None:
        self.task = task
        self.examples = examples
        self.model = model
        self.shards = shards
        self.client_cfg = client_cfg
        self.uplink = uplink
        self.hooks = list(hooks)
        self.store = store
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        tune_allocator()  # clients are often small machines: see fedfm.memory

    def fit(self, task: FitTask, broadcast: State) -> FitReply:
        """Train from `task.state` (or the broadcast) and reply with the encoded update.

        Never raises: an unknown client or any error becomes `FitReply.failure`.
        """
        shard = self.shards.get(task.client_id)
        if shard is None:
            return _failed(task, "unknown_client", f"no data for client {task.client_id}")
        try:
            return self._fit(task, broadcast, shard)
        except Exception as exc:  # a failing client is a value, not a dead round
            return _failed(task, "train_error", _one_line(exc))
        finally:
            trim()  # this fit's activations go back to the OS before the next client

    def _fit(self, task: FitTask, broadcast: State, shard: ClientData) -> FitReply:
        cfg = self.client_cfg
        # 1. Start: the client's own state or the broadcast; hooks set up the fit.
        start = task.state if task.state is not None else broadcast
        lr = task.overrides.lr if task.overrides.lr is not None else cfg.lr
        ctx = FitContext(task, start, start, self.store, lr, num_examples=len(shard.train))
        for hook in self.hooks:
            hook.before_train(ctx)

        # 2. Local training, task-agnostic.
        self.model.set_state(ctx.model_start)
        params = self.model.params
        optimizer = make_optimizer(
            list(params.values()), cfg.optimizer, lr, cfg.weight_decay, cfg.momentum
        )
        result = local_train(
            self.model.module,
            params,
            lambda rng: self.task.batches(self.examples, shard.train, cfg.batch_size, rng),
            self.task.loss,
            optimizer,
            epochs=task.overrides.epochs or cfg.epochs,
            max_steps=task.overrides.max_steps or cfg.max_steps,
            seeds=[self.seed, task.server_round, task.client_id],
            grad_clip=cfg.grad_clip,
            loss_terms=ctx.loss_terms,
            grad_hooks=ctx.grad_hooks,
        )

        # 3. After training: hooks adjust the end state and add extras.
        ctx.end, ctx.steps = self.model.get_state(), result.steps
        for hook in reversed(self.hooks):
            hook.after_train(ctx)
        update = subtract(ctx.end, start)

        # 4. Encode the update and the extras through the uplink pipeline.
        bound = task.overrides.clip_norm  # adaptive clipping's bound this round
        on_wire = self.uplink.context(
            task.client_id,
            task.server_round,
            "update",
            self.store,
            len(shard.train),
            clip_norm=bound,
        )
        payload, stage_metrics = self.uplink.encode(update, on_wire)
        extras = {
            name: self.uplink.encode(
                value,
                self.uplink.context(
                    task.client_id, task.server_round, name, self.store, clip_norm=bound
                ),
            )[0]
            for name, value in ctx.extras.items()
        }

        # 5. Reply.
        metrics = {
            "train_loss": result.train_loss,
            "steps": float(result.steps),
            "num_examples": float(len(shard.train)),
            **ctx.metrics,
            **stage_metrics,
        }
        return FitReply(
            task.client_id, task.server_round, len(shard.train), payload, extras, metrics
        )

    def secagg_step(self, client_id: int, server_round: int, data: bytes) -> bytes | None:
        """Answer one secure-aggregation message for `client_id` (the uplink's MASK stage).

        Never raises: an unknown client, no MASK stage, or a refused or malformed message
        gives `None`, no reply (the server counts the client as dropped out).
        """
        stage = mask_stage(self.uplink)
        if stage is None or client_id not in self.shards:
            return None
        try:
            return stage.client_step(client_id, server_round, data)
        except Exception as exc:  # a refusal is a dropout, never a crash
            logger.warning("client %d, round %d: secagg: %s", client_id, server_round, exc)
            return None

    def evaluate(self, task: EvalTask, state: State) -> EvalReply:
        """The task's metrics of `state` on the client's local test split.

        With `task.personalize_steps > 0` the client first fine-tunes that many local steps
        from `state` (a fresh optimiser at the configured learning rate). Never raises.
        """
        shard = self.shards.get(task.client_id)
        if shard is None:
            failure = Failure("unknown_client", f"no data for client {task.client_id}")
            return EvalReply(task.client_id, 0, failure=failure)
        try:
            self.model.set_state(state)
            if task.personalize_steps > 0:
                self._personalize(task, shard)
            metrics = self.task.evaluate(
                self.model.module, self.examples, shard.test, self.eval_batch_size
            )
        except Exception as exc:
            failure = Failure("eval_error", _one_line(exc))
            return EvalReply(task.client_id, 0, failure=failure)
        finally:
            trim()
        n = int(metrics.pop("num_examples", len(shard.test)))
        return EvalReply(task.client_id, n, metrics)

    def _personalize(self, task: EvalTask, shard: ClientData) -> None:
        cfg = self.client_cfg
        params = self.model.params
        local_train(
            self.model.module,
            params,
            lambda rng: self.task.batches(self.examples, shard.train, cfg.batch_size, rng),
            self.task.loss,
            make_optimizer(
                list(params.values()), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum
            ),
            epochs=10**6,
            max_steps=task.personalize_steps,
            seeds=[self.seed, task.server_round, task.client_id, PERSONALIZE_SALT],
            grad_clip=cfg.grad_clip,
        )


def _failed(task: FitTask, kind: FailureKind, detail: str) -> FitReply:
    return FitReply(task.client_id, task.server_round, 0, failure=Failure(kind, detail))


def _one_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()
