"""The code every saved checkpoint carries, so that it loads where the spikegpt package is not installed.

``config.json``'s ``auto_map`` points transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` at
this folder's ``config.py`` and ``model.py``; beside them the checkpoint holds every file they import relatively
(transitively): the rest of this folder and the PyTorch references of the kernels (``ops.py``). With
``trust_remote_code=True`` transformers copies exactly those files (every file a relative import names) into its
module cache and imports them, so torch and transformers are all the checkpoint needs. A model loaded that way
saves the same files again (transformers' ``custom_object_save`` and ``save_pretrained`` below agree on names and
``auto_map``), so a checkpoint re-saved after a remote-code load is unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_imports

from .ops import REFERENCES

# "file.Class" as transformers' custom_object_save writes it: the last part of the class's module name
AUTO_MAP = {
    "AutoConfig": "config.SpikeGPTConfig",
    "AutoModel": "model.SpikeGPTModel",
    "AutoModelForCausalLM": "model.SpikeGPTForCausalLM",
}
ENTRY_FILES = ("config.py", "model.py")


def code_files() -> dict[str, Path]:
    """Every file a checkpoint carries: its name → the file it is copied from (this folder's, else the kernels'
    PyTorch reference of that name), found as transformers' loader finds them."""
    here = Path(__file__).parent
    files: dict[str, Path] = {}
    pending = list(ENTRY_FILES)
    while pending:
        name = pending.pop()
        if name in files:
            continue
        files[name] = here / name if (here / name).is_file() else REFERENCES / name
        pending += [f"{module}.py" for module in get_relative_imports(files[name])]
    return dict(sorted(files.items()))


def write_code_files(directory: str | Path) -> None:
    for name, source in code_files().items():
        shutil.copyfile(source, Path(directory) / name)
