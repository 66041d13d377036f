"""Weights at fewer bits: per-channel weight grids (8, 4, 1 bit) and quantization-aware training, the int8 weights
the decoding products read, and memristive weight noise."""
