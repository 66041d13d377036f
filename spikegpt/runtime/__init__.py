"""What runs a model, without HTTP or a training loop: the engine (admission, prefill schedule, events), the model
runner (state slots, the decoding step, the products), the prefix-state cache, sampling and the text stream."""
