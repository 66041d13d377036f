"""Publishing a trained model directory to the Hugging Face Hub."""

from __future__ import annotations

import logging
from pathlib import Path

from spikegpt.errors import TrainingError

from .checkpointing import MODEL_FILES

logger = logging.getLogger(__name__)


def push_model(folder: str | Path, hub_id: str, private: bool = False, api=None) -> str:
    """Create (or reuse) the model repository ``hub_id`` and upload the model files of ``folder`` (weights, config,
    tokenizer, model card; never checkpoints or optimizer state). Returns the commit URL.

    Authentication is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``). The project's tests run without
    network access, so they check everything up to the upload with a stand-in ``api``; the calls themselves are
    ``HfApi.create_repo`` and ``HfApi.upload_folder``.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    folder = Path(folder)
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise TrainingError(f"{folder}: nothing to push ({', '.join(missing)} missing)")
    try:
        api.create_repo(repo_id=hub_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=hub_id,
            repo_type="model",
            folder_path=str(folder),
            allow_patterns=list(MODEL_FILES),
            commit_message="Upload SpikeGPT model trained with spikegpt",
        )
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(f"could not push {folder} to the Hub as {hub_id}: {first_line}") from e
    url = getattr(commit, "commit_url", str(commit))
    logger.info("pushed %s to %s", folder, url)
    return url
