"""Progress bars on a terminal only: in a log file or a pipe a bar is a stream of cursor codes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from transformers.utils import logging as hf_logging


def on_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def transformers_bars_on_terminal() -> Iterator[None]:
    """Within: transformers' own bars ("Loading weights", "Writing model shards") only when stderr is a terminal."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not on_terminal():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
