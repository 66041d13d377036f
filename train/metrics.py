"""Where training metrics go: a JSONL file (one object per record) and TensorBoard when it is installed."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records to ``OUTPUT/metrics.jsonl``; numeric fields also go to TensorBoard (``OUTPUT/tensorboard``)
    when the ``tensorboard`` package is installed. Only the main process should create one."""

    def __init__(self, output_dir: str | Path, resume_step: int | None = None):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run in an old directory starts a fresh log
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._writer = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step)
        else:
            logger.info("tensorboard is not installed: metrics go to %s only", self.path)

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites what followed its checkpoint, so the log reads as one uninterrupted run."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any], prefix: str = "train") -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])
                elif isinstance(value, dict):
                    for name, item in value.items():
                        self._writer.add_scalar(f"{prefix}/{key}/{name}", item, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
