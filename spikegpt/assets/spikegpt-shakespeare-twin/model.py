"""The SpikeGPT architecture as the original ridgerchu/SpikeGPT ``src/model.py`` trains it, as Hugging Face models.

One forward serves both forms: over ``[B, T]`` tokens it is the parallel form (training, prompt prefill); given
a ``RecurrentState`` it continues from it, so feeding a sequence in any split (single tokens included) computes
the same spikes and logits as one pass.

    x = spikes(emb(ids))                      Heaviside, surrogate gradient (``binary_embedding``)
    block i:  x = ln0(x) if i == 0
              x = x + LIF(TimeMix(ln1(x)))     (layer 0 with ``ffn_pre``: a ChannelMix instead)
              x = x + LIF(ChannelMix(ln2(x)))
              x = dropout(x)
    logits = head(ln_out(x))                   untied head

Padding (``attention_mask`` with zeros, left or right, in either form) is honoured exactly: a padded position
changes no state (token shifts, WKV sums, membranes) and counts in no statistic, so each row of a padded batch
computes what its real tokens alone would; the logits at padded positions are finite but meaningless.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .code_files import AUTO_MAP, write_code_files
from .config import SpikeGPTConfig
from .layout import SpikeLayout, spike_layout
from .neuron import EmbeddingSpikes, InputSpikes, LIFLayer, input_reads
from .ops import fresh_state, wkv
from .state import RecurrentState
from .stats import SpikeStats

LayerState = tuple[torch.Tensor, ...]  # one block's slice of RecurrentState, in its field order
# step(tokens [B, 1], state) -> (logits [B, vocab], new state, (spike counts, projection reads))
DecodingStep = Callable[[torch.Tensor, RecurrentState], tuple[torch.Tensor, RecurrentState, tuple]]
IGNORE_INDEX = -100  # a label the loss skips: a position without a target (padding)


def _as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in ``dtype``; x itself where it is already (a traced decoding step then records no conversion)."""
    return x if x.dtype == dtype else x.to(dtype)


def token_shift(
    x: torch.Tensor, previous: torch.Tensor | None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's predecessor along T, and the shift to carry on (the last token); the first token's predecessor
    is ``previous`` (zero for a fresh sequence). With a padding ``mask`` ``[B, T]``, a token's predecessor is the
    last real token before it, and the carried shift the last real token (``previous`` when a row has none)."""
    first = torch.zeros_like(x[:, :1]) if previous is None else _as_dtype(previous[:, None], x.dtype)
    if mask is None:
        return (first if x.shape[1] == 1 else torch.cat([first, x[:, :-1]], dim=1)), x[:, -1]
    history = torch.cat([first, x], dim=1)  # index 0: the token before this input, index t + 1: token t
    own = torch.arange(1, x.shape[1] + 1, device=x.device) * mask  # each real token's index in history, else 0
    latest = own.cummax(dim=1).values  # the history index of the last real token up to each position
    index = torch.cat([latest.new_zeros(latest.shape[0], 1), latest], dim=1)  # T predecessors, then the carried
    picked = history.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))
    return picked[:, :-1], picked[:, -1]


def padding_mask(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """The real tokens of an input of ``length`` tokens per row, ``[batch, length]`` bool, from transformers'
    ``attention_mask`` (1 = a real token, 0 = padding), which may also cover the tokens before the input (as
    ``generate()`` passes it: its last ``length`` columns are the input's); None when every token is real."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
        raise ValueError(
            f"attention_mask must be [batch, tokens] with {batch} rows and at least the input's {length} columns, "
            f"got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask[:, -length:].to(torch.bool)
    return None if bool(mask.all()) else mask


def real_tokens(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """``[batch]`` int64: the real tokens of each row of an input of ``length`` tokens with padding ``mask``."""
    if mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return mask.sum(dim=1)


def mix(x: torch.Tensor, shifted: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """x·ratio + shifted·(1 − ratio), as one operation."""
    return torch.lerp(shifted, x, ratio)


def project(linear: nn.Linear, spikes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """A projection of spikes; spike counts carry their threshold ``scale`` ``[B, T, 1]``, applied to the product's
    output (one multiply per output element) so that the product itself reads whole numbers."""
    out = linear(spikes)
    return out if scale is None else out * _as_dtype(scale, out.dtype)


class TimeMix(nn.Module):
    """RWKV-4 time mixing: token shift, bias-free K/V/R/O projections and the WKV recurrence."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int, spiking_inputs: bool):
        super().__init__()
        self.layer_id = layer_id
        c = config.n_embd
        self.time_decay = nn.Parameter(torch.empty(c))
        self.time_first = nn.Parameter(torch.empty(c))
        self.time_mix_k = nn.Parameter(torch.empty(c))
        self.time_mix_v = nn.Parameter(torch.empty(c))
        self.time_mix_r = nn.Parameter(torch.empty(c))
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        for zero_init in (self.key, self.receptance, self.output):
            zero_init.init_scale = 0.0
        self.encode = self.encode_output = None
        if spiking_inputs:
            self.encode = InputSpikes(config, (c, c, c), (True, True, True))
            self.encode_output = InputSpikes(config, (c,), (True,))
        self.membrane_width = sum(e.membrane_width for e in (self.encode, self.encode_output) if e is not None)

    def forward(self, x, shift, wkv_state, input_v=None, mask=None):
        """→ (output, new shift, new WKV state, new input membrane, reads ``[B, 4, 2]`` of K, V, R, O); ``mask``:
        the padding mask ``[B, T]`` or None."""
        xx, shift = token_shift(x, shift, mask)
        xk, xv, xr = mix(x, xx, self.time_mix_k), mix(x, xx, self.time_mix_v), mix(x, xx, self.time_mix_r)
        if self.encode is None:
            k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
            reads = [input_reads(xk, False, mask), input_reads(xv, False, mask), input_reads(xr, False, mask)]
        else:
            c = xk.shape[-1]
            v_krv, v_o = (None, None) if input_v is None else (input_v[:, : 3 * c], input_v[:, 3 * c : 4 * c])
            spikes, scales, v_krv, krv_reads = self.encode([xk, xv, xr], v_krv, mask)
            k, v, r = (project(p, s, sc) for p, s, sc in zip(self.projections[:3], spikes, scales, strict=True))
        r = torch.sigmoid(r)
        w = -torch.exp(_as_dtype(self.time_decay, torch.float32))
        y, wkv_state = wkv(w, _as_dtype(self.time_first, torch.float32), k, v, wkv_state, mask)
        gated = r * y
        if self.encode is None:
            reads.append(input_reads(gated, False, mask))
            return self.output(gated), shift, wkv_state, None, torch.stack(reads, dim=1)
        (o,), (scale,), v_o, o_reads = self.encode_output([gated], v_o, mask)
        membrane = torch.cat([v_krv, v_o], dim=1)
        return project(self.output, o, scale), shift, wkv_state, membrane, torch.cat([krv_reads, o_reads], dim=1)

    @property
    def projections(self) -> tuple[nn.Linear, ...]:
        return (self.key, self.value, self.receptance, self.output)


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing: token shift, ``sigmoid(R x_r) * V(relu(K x_k)^2)``."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int, spiking_inputs: bool):
        super().__init__()
        self.layer_id = layer_id
        c, hidden = config.n_embd, config.ffn_hidden
        self.time_mix_k = nn.Parameter(torch.empty(c))
        self.time_mix_r = nn.Parameter(torch.empty(c))
        self.key = nn.Linear(c, hidden, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(hidden, c, bias=False)
        for zero_init in (self.value, self.receptance):
            zero_init.init_scale = 0.0
        self.encode = self.encode_value = None
        if spiking_inputs:
            self.encode = InputSpikes(config, (c, c), (True, True))
            self.encode_value = InputSpikes(config, (hidden,), (False,))
        self.membrane_width = sum(e.membrane_width for e in (self.encode, self.encode_value) if e is not None)

    def forward(self, x, shift, input_v=None, mask=None):
        """→ (output, new shift, new input membrane, reads ``[B, 3, 2]`` of K, R, V); ``mask``: the padding mask
        ``[B, T]`` or None."""
        xx, shift = token_shift(x, shift, mask)
        xk, xr = mix(x, xx, self.time_mix_k), mix(x, xx, self.time_mix_r)
        if self.encode is None:
            k = torch.square(torch.relu(self.key(xk)))
            r = torch.sigmoid(self.receptance(xr))
            reads = [input_reads(xk, False, mask), input_reads(xr, False, mask), input_reads(k, False, mask)]
            return r * self.value(k), shift, None, torch.stack(reads, dim=1)
        c = xk.shape[-1]
        v_kr, v_v = (None, None) if input_v is None else (input_v[:, : 2 * c], input_v[:, 2 * c : self.membrane_width])
        (sk, sr), (scale_k, scale_r), v_kr, kr_reads = self.encode([xk, xr], v_kr, mask)
        k = torch.square(torch.relu(project(self.key, sk, scale_k)))
        r = torch.sigmoid(project(self.receptance, sr, scale_r))
        (sv,), (scale_v,), v_v, v_reads = self.encode_value([k], v_v, mask)
        out = r * project(self.value, sv, scale_v)
        return out, shift, torch.cat([v_kr, v_v], dim=1), torch.cat([kr_reads, v_reads], dim=1)

    @property
    def projections(self) -> tuple[nn.Linear, ...]:
        return (self.key, self.receptance, self.value)


class Block(nn.Module):
    def __init__(self, config: SpikeGPTConfig, layout: SpikeLayout, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        c, eps = config.n_embd, config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(c, eps=eps)
        self.ln1 = nn.LayerNorm(c, eps=eps)
        self.ln2 = nn.LayerNorm(c, eps=eps)
        first, _ = layout.block(layer_id)
        if first.kind == "channel":  # ffn_pre
            self.ffn_pre = ChannelMix(config, layer_id, layout.spiking_inputs)
        else:
            self.att = TimeMix(config, layer_id, layout.spiking_inputs)
        self.ffn = ChannelMix(config, layer_id, layout.spiking_inputs)
        self.spikes_on_residual = layout.lif_on_residual
        self.att_lif = LIFLayer(config)
        self.ffn_lif = LIFLayer(config)
        self.drop = nn.Dropout(config.dropout)
        every = config.rescale_layer
        self.branch_scale = 2.0 ** -(layer_id // every) if every else 1.0
        self.halve_after = bool(every) and (layer_id + 1) % every == 0

    @property
    def mixers(self) -> tuple[nn.Module, nn.Module]:
        return (self.ffn_pre if hasattr(self, "ffn_pre") else self.att, self.ffn)

    @property
    def membrane_width(self) -> int:
        """Width of this block's input-spike membranes (0 unless the projections read binary LIF spikes)."""
        return sum(m.membrane_width for m in self.mixers)

    def forward(
        self, x: torch.Tensor, state: LayerState | None, input_width: int = 0, mask: torch.Tensor | None = None
    ):
        """x ``[B, T, C]`` → (x, new layer state, spikes per row ``[B]`` of the two LIF layers, reads of every
        projection's input ``[B, n_projections, 2]``). ``input_width``: the width of the state's ``input_v``;
        ``mask``: the padding mask ``[B, T]`` (True = a real token) or None."""
        att_shift, ffn_shift, num, den, mx, att_v, ffn_v, input_v = state if state is not None else (None,) * 8
        wkv_state = (num, den, mx) if state is not None else None
        split, end = self.mixers[0].membrane_width, self.membrane_width
        att_in, ffn_in = (None, None) if input_v is None else (input_v[:, :split], input_v[:, split:end])
        if self.layer_id == 0:
            x = self.ln0(x)
        if hasattr(self, "ffn_pre"):
            branch, att_shift, att_in, att_reads = self.ffn_pre(self.ln1(x), att_shift, att_in, mask)
        else:
            branch, att_shift, wkv_state, att_in, att_reads = self.att(self.ln1(x), att_shift, wkv_state, att_in, mask)
        if self.branch_scale != 1.0:
            branch = branch * self.branch_scale
        x, att_v, att_count = self._add(x, branch, self.att_lif, att_v, mask)
        branch, ffn_shift, ffn_in, ffn_reads = self.ffn(self.ln2(x), ffn_shift, ffn_in, mask)
        if self.branch_scale != 1.0:
            branch = branch * self.branch_scale
        x, ffn_v, ffn_count = self._add(x, branch, self.ffn_lif, ffn_v, mask)
        if self.halve_after:
            x = x / 2
        x = self.drop(x)
        if wkv_state is None:  # layer 0 with ffn_pre and a fresh sequence: its WKV slot stays fresh
            wkv_state = fresh_state(x.shape[0], x.shape[2], x.device)
        batch = x.shape[0]
        membranes = [m for m in (att_in, ffn_in) if m is not None]
        pad = input_width - sum(m.shape[1] for m in membranes)
        input_v = torch.cat([*membranes, x.new_zeros(batch, pad, dtype=torch.float32)], dim=1)
        new_state = (att_shift, ffn_shift, *wkv_state, att_v, ffn_v, input_v)
        return x, new_state, (att_count, ffn_count), torch.cat([att_reads, ffn_reads], dim=1)

    def _add(self, x, branch, lif_layer, v, mask):
        """The residual addition: the branch's LIF spikes (placement "residual") or the branch itself ("inputs")."""
        if self.spikes_on_residual:
            spikes, v, count = lif_layer(branch, v, mask)
            return x + spikes, v, count
        if v is None:
            v = x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32)
        return x + branch, v, None


@dataclass
class SpikeGPTModelOutput(ModelOutput):
    """last_hidden_state (after ``ln_out``), the state after the last token, and spike statistics."""

    last_hidden_state: torch.Tensor | None = None
    state: RecurrentState | None = None
    spike_stats: SpikeStats | None = None


@dataclass
class SpikeGPTCausalLMOutput(ModelOutput):
    """loss (when labels are given), logits ``[B, T, vocab]``, the state after the last token (when a state was
    passed or ``use_cache``), and spike statistics (with ``output_spike_stats``)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: RecurrentState | None = None
    spike_stats: SpikeStats | None = None


class SpikeGPTPreTrainedModel(PreTrainedModel):
    config: SpikeGPTConfig
    config_class = SpikeGPTConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _keep_in_fp32_modules = ["time_decay", "time_first", "log_threshold"]
    _is_stateful = True
    supports_gradient_checkpointing = False

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """Hugging Face's save, plus the ``auto_map`` and the model's own code files, with which the checkpoint
        loads through ``trust_remote_code=True`` where only torch and transformers are installed (``code_files``)."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_code_files(save_directory)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """RWKV-4's initialisation (decay and bonus curves, mixing ramps, orthogonal or zero projections), which the
        original SpikeGPT defines but, for its projections, never runs."""
        cfg = self.config
        if isinstance(module, (TimeMix, ChannelMix)):
            layer, n_layer, c = module.layer_id, cfg.n_layer, cfg.n_embd
            depth = layer / max(n_layer - 1, 1)  # 0 → 1 across the stack
            rest = 1.0 - layer / n_layer  # 1 → ~0
            ramp = torch.arange(c, dtype=torch.float32) / c
            init.copy_(module.time_mix_k, ramp.pow(rest))
            init.copy_(module.time_mix_r, ramp.pow(0.5 * rest) if isinstance(module, TimeMix) else ramp.pow(rest))
            if isinstance(module, TimeMix):
                init.copy_(module.time_mix_v, ramp.pow(rest) + 0.3 * depth)
                h = torch.arange(c, dtype=torch.float32) / max(c - 1, 1)
                init.copy_(module.time_decay, -5 + 8 * h.pow(0.7 + 1.3 * depth))
                zigzag = ((torch.arange(c) + 1) % 3 - 1).float() * 0.5
                init.copy_(module.time_first, math.log(0.3) + zigzag)
        elif isinstance(module, nn.Linear):
            out_features, in_features = module.weight.shape
            scale = getattr(module, "init_scale", 1.0)
            if out_features == cfg.vocab_size and in_features == cfg.n_embd:
                scale = 0.5  # the head
            if scale == 0.0:
                init.zeros_(module.weight)
            else:
                gain = math.sqrt(out_features / in_features) if out_features > in_features else 1.0
                init.orthogonal_(module.weight, gain=gain * scale)
        elif isinstance(module, InputSpikes) and module.log_threshold is not None:
            init.zeros_(module.log_threshold)  # exp(0) = 1: the thresholds as configured
        elif isinstance(module, nn.Embedding):
            init.orthogonal_(module.weight, gain=math.sqrt(max(module.weight.shape)) * 1e-4)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class SpikeGPTModel(SpikeGPTPreTrainedModel):
    """Embedding, blocks and the final LayerNorm."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.emb_spikes = EmbeddingSpikes(config)
        self.layout = spike_layout(config)
        self.blocks = nn.ModuleList(Block(config, self.layout, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.sites = self.layout.sites  # the names of SpikeStats' counts and reads
        self.projections = self.layout.product_names
        self.input_width = max(block.membrane_width for block in self.blocks)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.emb = value

    def fresh_state(self, batch: int) -> RecurrentState:
        """The state of ``batch`` sequences that have seen no tokens, on this model's device."""
        c = self.config
        return RecurrentState.fresh(
            batch, c.n_layer, c.n_embd, self.emb.weight.device, self.emb.weight.dtype, input_width=self.input_width
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        state: RecurrentState | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_spike_stats: bool = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SpikeGPTModelOutput:
        """``attention_mask`` (1 = a real token, 0 = padding; see ``padding_mask``): a padded position leaves the
        state as it was and counts in no statistic."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        if x.shape[1] == 0:
            raise ValueError("SpikeGPT needs at least one token per sequence")
        if state is not None and state.batch_size != x.shape[0]:
            raise ValueError(f"state holds {state.batch_size} sequences but the input has {x.shape[0]}")
        mask = padding_mask(attention_mask, x.shape[0], x.shape[1])
        x, emb_count = self.emb_spikes(x, mask)
        counts, reads = [emb_count], []
        layers = []
        for i, block in enumerate(self.blocks):
            x, layer_state, block_counts, block_reads = block(
                x, state.layer(i) if state is not None else None, self.input_width, mask
            )
            layers.append(layer_state)
            counts.extend(count for count in block_counts if count is not None)
            reads.append(block_reads)
        x = self.ln_out(x)
        keep_state = state is not None or bool(use_cache)
        stats = None
        if output_spike_stats:
            batch, tokens = x.shape[:2]
            stats = SpikeStats(
                counts=torch.stack(counts, dim=1),
                tokens=real_tokens(mask, batch, tokens, x.device),
                sites=self.sites,
                n_embd=self.config.n_embd,
                reads=torch.cat(reads, dim=1),
                projections=self.projections,
            )
        return SpikeGPTModelOutput(
            last_hidden_state=x,
            state=RecurrentState.from_layers(layers) if keep_state else None,
            spike_stats=stats,
        )


class SpikeGPTForCausalLM(SpikeGPTPreTrainedModel, GenerationMixin):
    """SpikeGPT with its language-modelling head (untied)."""

    # Where generate()'s one-token forwards (``decoding``) may get a faster form of the same step: a function
    # (model, tokens [B, 1], state) -> a step running the very same operations (a model on the 8-bit grid: its int8
    # products, as the serving engine decodes it), or None where none can serve. The spikegpt package installs its
    # traced step (``spikegpt.runtime.step.generate_step``) on import; a checkpoint loaded without the package
    # decodes with the plain forward.
    decoding_steps: ClassVar[Callable[..., DecodingStep | None] | None] = None

    def __init__(self, config: SpikeGPTConfig):
        super().__init__(config)
        self.model = SpikeGPTModel(config)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.head = value

    def fresh_state(self, batch: int) -> RecurrentState:
        return self.model.fresh_state(batch)

    @property
    def layout(self) -> SpikeLayout:
        """Where the model's spikes are and what its products read (``spikegpt.modeling.layout``)."""
        return self.model.layout

    def product(self, name: str) -> nn.Linear:
        """The module of the layout's product ``name`` (``blocks.0.att.key``, ..., ``head``)."""
        return self.head if name == self.layout.head.name else self.model.get_submodule(name)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        state: RecurrentState | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_spike_stats: bool = False,
        logits_to_keep: int = 0,
        decoding: bool = False,
        **kwargs,
    ) -> SpikeGPTCausalLMOutput:
        """Logits for every position of ``input_ids`` ``[B, T]``, continuing from ``state`` when given.

        The loss (transformers' causal-LM cross-entropy, the one training and evaluation use): ``labels`` ``[B, T]``
        (usually ``input_ids``) are shifted inside, position t predicts label t + 1; or ``shift_labels`` ``[B, T]``
        are already position t's targets (a packed block's next tokens). ``IGNORE_INDEX`` (-100) marks a position
        without a target (padding). It is the mean over the targets, or their sum divided by
        ``num_items_in_batch`` when given (the target count of a whole accumulated batch or evaluation set).

        ``attention_mask`` (1 = a real token, 0 = padding, left or right; it may also cover the tokens before the
        input, as ``generate()`` passes it): a padded position leaves the state as it was and counts in no
        statistic, so each row computes what its real tokens alone would; its logits are finite but meaningless
        (label it ``IGNORE_INDEX``). ``logits_to_keep`` > 0 computes only the last positions' logits.
        ``decoding`` (set by ``generate()`` after the prompt): one token per row from ``state``, through the step
        ``decoding_steps`` gives where it can serve (the package's traced step: the same operations, bit for bit,
        without Python between them; for a model on the 8-bit grid on a CPU, the int8 products the engine decodes
        with).
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is not None:
            attention_mask = padding_mask(attention_mask, tokens.shape[0], tokens.shape[1])
        one_token = state is not None and input_ids is not None and input_ids.shape[1] == 1 and attention_mask is None
        steps = type(self).decoding_steps
        if decoding and one_token and labels is None and shift_labels is None and not output_spike_stats and steps:
            step = steps(self, input_ids, state)
            if step is not None:
                logits, state, _ = step(input_ids, state)
                return SpikeGPTCausalLMOutput(logits=logits[:, None], state=state)
        out = self.model(
            input_ids=input_ids,
            state=state,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            output_spike_stats=output_spike_stats,
            attention_mask=attention_mask,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.head(hidden)
        stats = out.spike_stats
        if stats is not None:
            kept = None if attention_mask is None else attention_mask[:, -hidden.shape[1] :]
            stats.head_tokens = real_tokens(kept, hidden.shape[0], hidden.shape[1], hidden.device)
        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(
                logits,
                labels,
                vocab_size=self.config.vocab_size,
                shift_labels=shift_labels.contiguous() if shift_labels is not None else None,  # a view of a block
                num_items_in_batch=num_items_in_batch,
                ignore_index=IGNORE_INDEX,
            )
        return SpikeGPTCausalLMOutput(loss=loss, logits=logits, state=out.state, spike_stats=stats)

    # generate(): the recurrent state is this model's cache, carried in model_kwargs["state"] (a cache name
    # GenerationMixin knows). No DynamicCache is made beside it: beam search reorders the first cache it finds, and
    # reordering an empty DynamicCache instead of the state would let the beams read each other's history.
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs["state"] = outputs.state
        model_kwargs["decoding"] = True  # from now on one token per step (see forward)
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)

    def _reorder_cache(self, state: RecurrentState, beam_idx: torch.LongTensor) -> RecurrentState:
        """Beam search's hook: row i of the next step continues the sequence in row ``beam_idx[i]``."""
        return state.select(beam_idx.to(state.att_shift.device))
