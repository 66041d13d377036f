"""What the machines of a multi-node run share: whether they see one output directory, and the tokenizer, which
the main process hands to the others over the process group rather than through a filesystem."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from spikegpt.hub.tokenizer import load_tokenizer

MARKER_PREFIX = ".node-"


def shared_output_dir(accelerator, output_dir: Path) -> bool:
    """True when every machine sees the same ``output_dir`` (a shared filesystem), found by looking: each machine's
    first process leaves a marker there and checks for the other machines' markers. Every process calls this."""
    from accelerate.utils import gather_object

    if accelerator.num_processes == 1:
        return True
    marker = output_dir / f"{MARKER_PREFIX}{uuid.uuid4().hex}"
    if accelerator.is_local_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
    markers = [m for m in gather_object([marker.name if accelerator.is_local_main_process else None]) if m]
    accelerator.wait_for_everyone()  # every marker is written
    sees_all = [all((output_dir / m).exists() for m in markers)] if accelerator.is_local_main_process else [True]
    shared = all(gather_object(sees_all))
    accelerator.wait_for_everyone()  # every marker is read
    if accelerator.is_local_main_process:
        marker.unlink()
    return shared


def share_tokenizer(accelerator, make):
    """The tokenizer ``make()`` returns on the main process, on every process (its files sent to the others)."""
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes == 1:
        return make()
    files = None
    if accelerator.is_main_process:
        tokenizer = make()
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
    files = broadcast_object_list([files])[0]
    if accelerator.is_main_process:
        return tokenizer
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return load_tokenizer(folder)
