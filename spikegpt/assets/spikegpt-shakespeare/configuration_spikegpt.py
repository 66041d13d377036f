"""Loads SpikeGPT from the installed spikegpt package (this file holds no model code; spikegpt writes it with
every checkpoint so that transformers' Auto classes load the model with trust_remote_code=True)."""

try:
    from spikegpt.config import SpikeGPTConfig
except ImportError as error:  # transformers skips imports inside try blocks when it checks a file's requirements
    raise ImportError('this checkpoint is a SpikeGPT model, whose code is the spikegpt package, and spikegpt is not installed in this Python environment; install it (pip install spikegpt) and load the checkpoint again') from error

__all__ = ['SpikeGPTConfig']
