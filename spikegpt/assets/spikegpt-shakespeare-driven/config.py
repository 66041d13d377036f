"""``SpikeGPTConfig``: every hyper-parameter of a SpikeGPT model, saved as ``config.json``.

Also the package's base error and ``ConfigError``: they live beside the model (which imports nothing from the rest
of the package, so that checkpoints carry it) and ``spikegpt.errors`` re-exports them.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict  # transformers' own configurations use it; a dependency of transformers
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

LIF_RESETS = ("hard", "soft")
SURROGATES = ("atan", "sigmoid")
SPIKE_PLACEMENTS = ("residual", "inputs")
INPUT_SPIKES = ("binary", "counts")
WEIGHT_BITS = (8, 4, 1)  # the weight grids of spikegpt.quant.grids


class SpikeGPTError(Exception):
    """Base class of every error the spikegpt package raises on purpose."""


class ConfigError(SpikeGPTError, ValueError):
    """A model configuration is invalid. ``field`` names the offending field, when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def check_weight_bits(bits: int) -> None:
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        raise ConfigError(f"weight_bits must be one of {', '.join(map(str, WEIGHT_BITS))}, got {bits!r}", "weight_bits")


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
    Where the spikes go (README, "Where the spikes go"):
        spike_placement: "residual" (the published SpikeGPT and the original checkpoints: a LIF after each block's
            time mix and channel mix, its spikes added to the real-valued residual stream; every projection reads a
            LayerNorm output) or "inputs" (spike-driven: the input of every projection in every block is spikes,
            encoded as ``input_spikes`` says; no LIF on the residual stream). LayerNorm, WKV, the sigmoid gates, the
            residual stream and the head stay real-valued in both.
        input_spikes: the encoding at the projections' inputs with "inputs": "binary" (multi-step LIF spikes, 0 or
            1, with the lif_* settings; membranes in ``RecurrentState.input_v``) or "counts" (integer spike counts
            round(x / theta) clipped to -K..K, or 0..K for the channel mix's non-negative relu(k)^2, with an adaptive
            threshold theta = mean|x| / spike_count_scale per token and projection; the product reads the counts
            and its output is scaled by theta; stateless).
        spike_count_max: K, the largest spike count per element and token.
        spike_count_scale: k in theta = mean|x| / k: larger k, finer steps and fewer zeros. With
            spike_count_max 1 the counts are signed ternary spikes (-1, 0, 1; 0 or 1 after relu(k)^2).
        learned_thresholds: every projection's input threshold carries a learned multiplier exp(a), one scalar a
            per projection (``log_threshold`` of its encoder, 0 at the start: the threshold as configured). Counts:
            theta = exp(a) mean|x| / k, trained through the spikes with LSQ's straight-through gradient (Esser et
            al., ICLR 2020, as SpikeLM learns its spike amplitude). Binary: the LIF threshold becomes exp(a) times
            lif_threshold (the input is divided by exp(a); LIF dynamics are linear in their input).
    Original inference quirks (see README, "Original weights"):
        rescale_layer: when > 0, block i's time-mix output and channel-mix value projection are divided by
            2^(i // rescale_layer) and the residual stream halved after every rescale_layer-th block, as the
            original ``src/model_run.py`` does with RWKV_RESCALE_LAYER = 6. 0 (default) is training's function.
    Quantized weights (``spikegpt.quant.grids``):
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
    spike_placement: str = "residual"
    input_spikes: str = "counts"
    spike_count_max: int = 4
    spike_count_scale: float = 1.0
    learned_thresholds: bool = False
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
        """Raise ``ConfigError`` naming the first invalid field (its ``field``)."""
        for name in ("vocab_size", "n_layer", "n_embd", "ctx_len", "ffn_hidden", "rescale_layer", "spike_count_max"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}", name)
        for name in ("vocab_size", "n_layer", "n_embd", "ctx_len", "ffn_hidden", "spike_count_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", name)
        for name in FLOAT_FIELDS:  # NaN passes every comparison below, inf most of them: refuse both first
            value = getattr(self, name)
            if isinstance(value, int | float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}", name)
        if self.lif_tau <= 1.0:
            raise ConfigError(f"lif_tau must be greater than 1, got {self.lif_tau}", "lif_tau")
        if self.lif_reset not in LIF_RESETS:
            raise ConfigError(f"lif_reset must be one of {', '.join(LIF_RESETS)}, got {self.lif_reset!r}", "lif_reset")
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"surrogate must be one of {', '.join(SURROGATES)}, got {self.surrogate!r}", "surrogate")
        if self.spike_placement not in SPIKE_PLACEMENTS:
            raise ConfigError(
                f"spike_placement must be one of {', '.join(SPIKE_PLACEMENTS)}, got {self.spike_placement!r}",
                "spike_placement",
            )
        if self.input_spikes not in INPUT_SPIKES:
            raise ConfigError(
                f"input_spikes must be one of {', '.join(INPUT_SPIKES)}, got {self.input_spikes!r}", "input_spikes"
            )
        if not self.spike_count_scale > 0:
            raise ConfigError(f"spike_count_scale must be positive, got {self.spike_count_scale}", "spike_count_scale")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", "dropout")
        if self.rescale_layer < 0:
            raise ConfigError(f"rescale_layer must be 0 (off) or positive, got {self.rescale_layer}", "rescale_layer")
        if self.weight_bits is not None:
            check_weight_bits(self.weight_bits)
        if self.tie_word_embeddings:
            raise ConfigError(
                "SpikeGPT's head is never tied to its embedding (tie_word_embeddings must be False)",
                "tie_word_embeddings",
            )

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def hidden_size(self) -> int:
        return self.n_embd


# every real-valued hyper-parameter, read from the annotations so that a new one is checked as well (``check``)
FLOAT_FIELDS = tuple(name for name, kind in SpikeGPTConfig.__annotations__.items() if "float" in str(kind))

# Make the model type known to transformers unless a class already stands for it (the package registers its own on
# import): a checkpoint loaded with trust_remote_code=True, where the package is not installed, then lets
# AutoTokenizer, which reads the model's configuration before the tokenizer's, load its tokenizer without asking
# again whether to run the checkpoint's code.
if SpikeGPTConfig.model_type not in CONFIG_MAPPING:
    AutoConfig.register(SpikeGPTConfig.model_type, SpikeGPTConfig)
