"""Loads SpikeGPT from the installed spikegpt package (this file holds no model code; spikegpt
writes it with every checkpoint so that transformers' Auto classes load the model with trust_remote_code=True)."""

# transformers does not count imports inside a try block among a file's requirements, so this message is the one
# a user without the package sees
try:
    from spikegpt.modeling.model import SpikeGPTForCausalLM, SpikeGPTModel
except ImportError as error:
    raise ImportError(
        "this checkpoint is a SpikeGPT model, whose code is the spikegpt package, and spikegpt is not "
        "installed in this Python environment; install it (pip install spikegpt) and load the checkpoint "
        "again"
    ) from error

__all__ = ["SpikeGPTForCausalLM", "SpikeGPTModel"]
