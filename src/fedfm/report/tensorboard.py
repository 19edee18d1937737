"""`TensorBoardCallback`: log each round's numeric metrics to TensorBoard.

TensorBoard is an optional extra (`pip install 'fedfm[tensorboard]'`), imported only when a
callback is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.errors import FedFMError
from fedfm.records import RoundRecord
from fedfm.report.metrics_io import is_number

INSTALL_HINT = "TensorBoard logging needs the extra: pip install 'fedfm[tensorboard]'"


class TensorBoardCallback:
    """Write every numeric top-level value of a round record as a TensorBoard scalar.

    Nested values (per-client mappings, client id lists) and non-numbers are skipped; the
    step is the record's `round`.

    Args:
        log_dir: the TensorBoard log directory, e.g. `RUN_DIR/tensorboard`.

    Raises:
        FedFMError: TensorBoard is not installed.
    """

    def __init__(self, log_dir: Path | str) -> None:
        self.log_dir = Path(log_dir)
        try:
            import tensorboard  # noqa: F401  (torch's writer needs it; fail with our hint)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise FedFMError(INSTALL_HINT) from err
        self.writer_ = SummaryWriter(log_dir=str(self.log_dir))

    def on_round_end(self, record: RoundRecord | Mapping[str, Any]) -> None:
        """Log the record's numeric values at step `record["round"]`, and flush."""
        flat = record.to_json() if isinstance(record, RoundRecord) else record
        step = int(flat["round"])
        for key, value in flat.items():
            if key != "round" and is_number(value):
                self.writer_.add_scalar(key, float(value), global_step=step)
        self.writer_.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer_.close()
