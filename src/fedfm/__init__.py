"""fedfm: federated learning with foundation models.

The names most programs need, imported lazily (so `import fedfm` stays cheap):

    from fedfm import load_config, run
    final_state = run(load_config("configs/digits.toml"), Path("runs/digits"))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "load_config": "fedfm.config",
    "Config": "fedfm.config",
    "run": "fedfm.run",
    "build": "fedfm.build",
    "ClientRuntime": "fedfm.client.runtime",
    "ClientHook": "fedfm.client.hooks",
    "Task": "fedfm.tasks.base",
    "Strategy": "fedfm.strategies.base",
    "FedAvg": "fedfm.strategies.fedavg",
    "Stage": "fedfm.pipeline",
    "Pipeline": "fedfm.pipeline",
    "Backend": "fedfm.backends.base",
    "FitTask": "fedfm.messages",
    "FitReply": "fedfm.messages",
    "RoundRecord": "fedfm.records",
    "FedFMError": "fedfm.errors",
}
__all__ = [*_NAMES, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'fedfm' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
