"""Rewrite the bundled models' configuration, tokenizer and code files through the code path that saves every
checkpoint (``save_pretrained`` of the model and the tokenizer), keeping its weights file byte for byte.

Run from the project root after a change to what checkpoints carry (``auto_map`` and code files, the chat
template, the unknown token):  python scripts/refresh_bundled_model.py [NAME ...]  (default: every bundled model)
``tests/train/test_bundled_models.py`` fails while the bundled files differ from what saving writes now.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from spikegpt.hub.checkpoint import BUNDLED_MODELS, bundled_model_path, load_model, saved_files

WEIGHTS = "model.safetensors"  # never rewritten: re-saving would change its layout, not its values


def refresh(bundled: Path) -> None:
    model, tokenizer = load_model(bundled)
    with tempfile.TemporaryDirectory() as scratch:
        written = saved_files(model, tokenizer, Path(scratch))
    for name, data in written.items():
        if name != WEIGHTS and name != "README.md":
            (bundled / name).write_bytes(data)
            print(f"wrote {bundled / name}")
    for stale in sorted(set(p.name for p in bundled.glob("*.py")) - set(written)):  # code files saving no longer writes
        (bundled / stale).unlink()
        print(f"removed {bundled / stale}")


def main(names: list[str]) -> int:
    for name in names or BUNDLED_MODELS:
        refresh(bundled_model_path(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
