"""Checkpoints in and out: strict loading of a model directory or Hub id, the code files a checkpoint carries, the
converter for the original ``.pth`` weights, and the tokenizers."""
