"""The operations the model calls: WKV, the LIF neurons and the spike functions.

Where the spikegpt package is installed they are ``spikegpt.kernels`` (Triton on CUDA, the PyTorch references
elsewhere). A checkpoint loaded with ``trust_remote_code=True`` where only torch and transformers are installed runs
the same PyTorch references: every checkpoint carries their files beside this one (``code_files``), and this file
imports them from there. The references are the definitions either way, so both compute the same logits.
"""

from __future__ import annotations

import inspect
from pathlib import Path

try:
    from spikegpt.kernels import LIFParams, fresh_state, lif, wkv
    from spikegpt.kernels.surrogate import spike, spike_count
    from spikegpt.kernels.wkv_torch import FRESH_MAX
except ImportError as unavailable:
    # no spikegpt here (or one without these kernels): in a checkpoint's copy of this file, the references carried
    # beside it. transformers copies every file a relative import names, here too, and does not require the
    # packages imported inside a try block.
    try:
        from .lif_torch import LIFParams
        from .lif_torch import lif_torch as lif
        from .surrogate import spike, spike_count
        from .wkv_torch import FRESH_MAX, fresh_state
        from .wkv_torch import wkv_torch as wkv
    except ImportError:
        raise unavailable from None  # the package's own copy of this file: its kernels are missing

__all__ = ["FRESH_MAX", "REFERENCES", "LIFParams", "fresh_state", "lif", "spike", "spike_count", "wkv"]

# The folder holding the PyTorch references this model runs or could fall back to: the installed spikegpt.kernels,
# or the checkpoint the model was loaded from.
REFERENCES = Path(inspect.getfile(LIFParams)).parent
