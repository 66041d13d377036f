"""The two small code files every saved checkpoint carries, so that Hugging Face tools load it without ``import
spikegpt``: ``config.json``'s ``auto_map`` points ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` at
them, and with ``trust_remote_code=True`` transformers imports them, which import the installed ``spikegpt`` (they
hold no model code, so a checkpoint never runs code older or newer than the package). Without the package, they
say how to install it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

INSTALL_HINT = (
    "this checkpoint is a SpikeGPT model, whose code is the spikegpt package, and spikegpt is not installed in "
    "this Python environment; install it (pip install spikegpt) and load the checkpoint again"
)

_HEADER = '''"""Loads SpikeGPT from the installed spikegpt package (this file holds no model code; spikegpt
writes it with every checkpoint so that transformers' Auto classes load the model with trust_remote_code=True)."""

# transformers does not count imports inside a try block among a file's requirements, so this message is the one
# a user without the package sees
try:
    {imports}
except ImportError as error:
    raise ImportError(
{hint}
    ) from error

__all__ = {names}
'''

CODE_FILES = {
    "configuration_spikegpt.py": ("from spikegpt.modeling.config import SpikeGPTConfig", ["SpikeGPTConfig"]),
    "modeling_spikegpt.py": (
        "from spikegpt.modeling.model import SpikeGPTForCausalLM, SpikeGPTModel",
        ["SpikeGPTForCausalLM", "SpikeGPTModel"],
    ),
}

AUTO_MAP = {
    "AutoConfig": "configuration_spikegpt.SpikeGPTConfig",
    "AutoModel": "modeling_spikegpt.SpikeGPTModel",
    "AutoModelForCausalLM": "modeling_spikegpt.SpikeGPTForCausalLM",
}


def code_file_text(name: str) -> str:
    imports, names = CODE_FILES[name]
    pieces = textwrap.wrap(INSTALL_HINT, 100, drop_whitespace=False)
    hint = "\n".join(f"        {json.dumps(piece)}" for piece in pieces)
    return _HEADER.format(imports=imports, hint=hint, names=json.dumps(names))


def write_code_files(directory: str | Path) -> None:
    for name in CODE_FILES:
        (Path(directory) / name).write_text(code_file_text(name))
