"""Checkpoints in and out: strict loading of a model directory or Hub id, the converter for the original ``.pth``
weights, and the tokenizers. (The code a checkpoint carries is the model's own: ``spikegpt.modeling.code_files``.)"""
