"""The model, self-contained: configuration, neurons, the recurrent state, the spike layout and its statistics.

Imports torch, transformers and its own files only (``spikegpt.kernels`` where installed), so that a saved checkpoint
carries this code and loads with ``trust_remote_code=True`` where the package is not installed.
"""
