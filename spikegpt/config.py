"""``SpikeGPTConfig``: every hyper-parameter of a SpikeGPT model, saved as ``config.json``."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .errors import ConfigError

LIF_RESETS = ("hard", "soft")
SURROGATES = ("atan", "sigmoid")


@strict
class SpikeGPTConfig(PreTrainedConfig):
    """Configuration of a SpikeGPT model (Zhu, Zhao, Li, Eshraghian), an RWKV-4 language model with spiking neurons.

    Architecture:
        vocab_size, n_layer, n_embd: vocabulary, number of blocks and width.
        ctx_len: the context length the model is trained on (the recurrent form itself has no limit).
        ffn_hidden: hidden width of the channel mix (default 4 * n_embd).
        ffn_pre: layer 0 uses a channel mix in place of its time mix (the original's "RWKV-ffnPre").
        layer_norm_eps, dropout: as in ``torch.nn``; dropout acts on the residual stream after each block
            (0.03 in the original training code).
    Spiking:
        spiking: False replaces every spike function by the identity (a non-spiking reference model).
        binary_embedding: pass the embedding through a Heaviside spike function (the original's training).
        lif_tau, lif_threshold, lif_reset: membrane time constant, firing threshold, "hard" (to 0) or "soft"
            (subtract the threshold) reset of the LIF neurons after each block's time mix and channel mix.
        surrogate, surrogate_alpha: surrogate gradient of the spike function ("atan", alpha 2 in the original).
    Original inference quirks (see README, "Original weights"):
        rescale_layer: when > 0, block i's time-mix output and channel-mix value projection are divided by
            2^(i // rescale_layer) and the residual stream halved after every rescale_layer-th block, as the
            original ``src/model_run.py`` does with RWKV_RESCALE_LAYER = 6. 0 (default) is training's function.
    Quantized weights (``spikegpt.quantize``):
        weight_bits: None (floating point), or 8, 4 or 1: every product's weights lie on that grid (one scale per
            output channel; 1 = binarized with a scale). Recorded by ``spikegpt quantize`` and quantization-aware
            training; the energy report prices products at this width.
    """

    model_type = "spikegpt"

    vocab_size: int = 50277
    n_layer: int = 12
    n_embd: int = 512
    ctx_len: int = 1024
    ffn_hidden: int | None = None
    ffn_pre: bool = False
    layer_norm_eps: float = 1e-5
    dropout: float = 0.03
    spiking: bool = True
    binary_embedding: bool = True
    lif_tau: float = 2.0
    lif_threshold: float = 1.0
    lif_reset: str = "hard"
    surrogate: str = "atan"
    surrogate_alpha: float = 2.0
    rescale_layer: int = 0
    weight_bits: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.ffn_hidden is None:
            self.ffn_hidden = 4 * self.n_embd
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise ``ConfigError`` naming the first invalid field."""
        for name in ("vocab_size", "n_layer", "n_embd", "ctx_len", "ffn_hidden", "rescale_layer"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("vocab_size", "n_layer", "n_embd", "ctx_len", "ffn_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lif_tau <= 1.0:
            raise ConfigError(f"lif_tau must be greater than 1, got {self.lif_tau}")
        if self.lif_reset not in LIF_RESETS:
            raise ConfigError(f"lif_reset must be one of {', '.join(LIF_RESETS)}, got {self.lif_reset!r}")
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"surrogate must be one of {', '.join(SURROGATES)}, got {self.surrogate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rescale_layer < 0:
            raise ConfigError(f"rescale_layer must be 0 (off) or positive, got {self.rescale_layer}")
        if self.weight_bits is not None:
            from .quantize import check_weight_bits

            check_weight_bits(self.weight_bits)
        if self.tie_word_embeddings:
            raise ConfigError("SpikeGPT's head is never tied to its embedding (tie_word_embeddings must be False)")

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def hidden_size(self) -> int:
        return self.n_embd
