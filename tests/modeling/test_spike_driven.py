"""Placement "inputs": every projection of every block reads spikes (binary LIF spikes or integer spike counts).

The forms agree for any split, the encoders compute what their definitions say (values by hand, surrogate
gradients against finite differences of their primitives), every matrix product but the head's reads whole
numbers (seen at the dispatcher), and the receipts the forward counts equal what the products were given.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import lively_weights_, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.errors import ConfigError
from spikegpt.kernels.surrogate import count_primitive, spike_count
from spikegpt.modeling.neuron import InputSpikes, lsq_primitive
from spikegpt.runtime.step import trace_decode_step

ENCODINGS = {
    "binary": dict(spike_placement="inputs", input_spikes="binary", lif_threshold=0.25),  # fires on random weights
    "counts": dict(spike_placement="inputs", input_spikes="counts", spike_count_max=3, spike_count_scale=1.5),
}
# the same with a learned threshold per projection (driven_model sets them away from 1x)
ENCODINGS |= {f"{name}-learned": dict(fields, learned_thresholds=True) for name, fields in ENCODINGS.items()}
SPLITS = [[1] * 17, [5, 1, 11], [16, 1]]


def driven_model(seed: int, encoding: str, **overrides) -> SpikeGPTForCausalLM:
    torch.manual_seed(seed)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(**ENCODINGS[encoding], **overrides)), seed)
    with torch.no_grad():  # learned thresholds between 0.6x and 1.6x: every encoder still fires
        for name, param in model.named_parameters():
            if name.endswith("log_threshold"):
                param.uniform_(-0.5, 0.5)
    return model.eval()


def encoder_spikes(model, ids, sizes):
    """Every encoder's output spikes, position by position, when the sequence is fed in pieces of ``sizes``; and
    the concatenated logits and the final state."""
    seen: dict[int, list[torch.Tensor]] = {}
    encoders = [m for m in model.modules() if isinstance(m, InputSpikes)]

    def keep(index):
        def hook(module, args, out):
            seen.setdefault(index, []).append(torch.cat([s.detach() for s in out[0]], dim=-1))

        return hook

    hooks = [e.register_forward_hook(keep(i)) for i, e in enumerate(encoders)]
    try:
        state, logits, start = None, [], 0
        for size in sizes:
            out = model(ids[:, start : start + size], state=state, use_cache=True, output_spike_stats=True)
            state, start = out.state, start + size
            logits.append(out.logits)
    finally:
        for hook in hooks:
            hook.remove()
    spikes = [torch.cat(seen[i], dim=1) for i in range(len(encoders))]
    return spikes, torch.cat(logits, dim=1), state


@pytest.mark.parametrize("sizes", SPLITS, ids=["tokens", "mixed", "long-then-one"])
@pytest.mark.parametrize("ffn_pre", [False, True], ids=["att", "ffn_pre"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_inputs_placement_pieces_equal_one_pass(encoding, ffn_pre, sizes, seed):
    model = driven_model(seed, encoding, ffn_pre=ffn_pre)
    ids = torch.randint(0, model.config.vocab_size, (3, sum(sizes)))
    whole_spikes, whole_logits, whole_state = encoder_spikes(model, ids, [sum(sizes)])
    piece_spikes, piece_logits, piece_state = encoder_spikes(model, ids, sizes)
    assert all(torch.equal(a, b) for a, b in zip(piece_spikes, whole_spikes, strict=True))  # identical fp32 spikes
    assert all(0 < float((s != 0).float().mean()) < 1 for s in whole_spikes)
    assert (piece_logits - whole_logits).abs().max() <= 1e-5 * whole_logits.abs().max()
    for ours, theirs in zip(piece_state.tensors(), whole_state.tensors(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # per block: time mix K|V|R and O (4d), channel mix K|R and V (2d + F); layer 0 with ffn_pre: two channel mixes
    width = whole_state.input_v.shape[-1]
    binary = model.config.input_spikes == "binary"
    assert width == (0 if not binary else 2 * (2 * 32 + 128) if ffn_pre else 4 * 32 + 2 * 32 + 128)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_inputs_model_round_trips_through_hugging_face(encoding, tmp_path, seed):
    model = driven_model(seed, encoding)
    model.save_pretrained(tmp_path)
    loaded = SpikeGPTForCausalLM.from_pretrained(tmp_path).eval()
    for field, value in ENCODINGS[encoding].items():
        assert getattr(loaded.config, field) == value
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        out = loaded.generate(ids[:, :3], max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 8)


def test_placement_settings_are_checked():
    with pytest.raises(ConfigError, match="spike_placement must be one of residual, inputs"):
        SpikeGPTConfig(spike_placement="everywhere")
    with pytest.raises(ConfigError, match="input_spikes must be one of binary, counts"):
        SpikeGPTConfig(input_spikes="ternary")
    with pytest.raises(ConfigError, match="spike_count_max must be at least 1"):
        SpikeGPTConfig(spike_count_max=0)
    with pytest.raises(ConfigError, match="spike_count_scale must be positive"):
        SpikeGPTConfig(spike_count_scale=0.0)


def test_count_encoder_by_hand():
    """theta = mean|x| / k per token; counts round(x / theta) clipped to -K..K (0..K unsigned); scale = theta."""
    config = tiny_config(**ENCODINGS["counts"])  # K = 3, k = 1.5
    x = torch.tensor([[[0.3, -1.2, 4.5, 0.0], [2.0, 2.0, 2.0, -2.0]]])
    # token 0: mean|x| = 1.5, theta = 1.0 -> [0.3, -1.2, 4.5, 0] rounds to [0, -1, 5 -> 3, 0]
    # token 1: mean|x| = 2.0, theta = 4/3 -> 1.5 rounds half to even: 2, and -2
    (signed,), (scale,), membrane, reads = InputSpikes(config, (4,), (True,))([x], None)
    assert signed.tolist() == [[[0.0, -1.0, 3.0, 0.0], [2.0, 2.0, 2.0, -2.0]]]
    assert scale.flatten().tolist() == pytest.approx([1.0, 4 / 3])
    assert membrane.shape == (1, 0)
    assert reads.tolist() == [[[6, 4 + 8]]]  # nonzero elements, summed magnitudes
    (unsigned,), _, _, _ = InputSpikes(config, (4,), (False,))([x], None)
    assert unsigned.tolist() == [[[0.0, 0.0, 3.0, 0.0], [2.0, 2.0, 2.0, 0.0]]]


@pytest.mark.parametrize(
    "k_max, signed_counts, unsigned_counts",
    [
        # x / theta = [0.3, -1.2, 4.5, 0] and [1.5, 1.5, 1.5, -1.5] (theta 1 and 4/3, as above)
        (1, [[0, -1, 1, 0], [1, 1, 1, -1]], [[0, 0, 1, 0], [1, 1, 1, 0]]),  # ternary: -1, 0, 1 (0, 1 unsigned)
        (2, [[0, -1, 2, 0], [2, 2, 2, -2]], [[0, 0, 2, 0], [2, 2, 2, 0]]),
    ],
    ids=["ternary", "k2"],
)
def test_ternary_and_two_level_counts_by_hand(k_max, signed_counts, unsigned_counts):
    """spike_count_max 1 is the signed ternary spike (SpikeLM's, with the adaptive threshold as amplitude) and 2
    the two-level one: the same encoder, clipped at K."""
    config = tiny_config(**{**ENCODINGS["counts"], "spike_count_max": k_max})
    x = torch.tensor([[[0.3, -1.2, 4.5, 0.0], [2.0, 2.0, 2.0, -2.0]]])
    (signed,), (scale,), _, reads = InputSpikes(config, (4,), (True,))([x], None)
    assert signed[0].tolist() == signed_counts
    assert scale.flatten().tolist() == pytest.approx([1.0, 4 / 3])
    magnitude = sum(abs(v) for row in signed_counts for v in row)
    assert reads.tolist() == [[[6, magnitude]]]
    (unsigned,), _, _, _ = InputSpikes(config, (4,), (False,))([x], None)
    assert unsigned[0].tolist() == unsigned_counts


def test_learned_thresholds_by_hand():
    """exp(a) multiplies each input's threshold: counts divide by exp(a) θ and carry it as their scale; binary
    spikes are those of a LIF with threshold exp(a) lif_threshold. At a = 0 both are the plain encoders."""
    x = torch.tensor([[[0.3, -1.2, 4.5, 0.0], [2.0, 2.0, 2.0, -2.0]]])
    counts = InputSpikes(tiny_config(**ENCODINGS["counts-learned"]), (4, 4), (True, True))
    plain = InputSpikes(tiny_config(**ENCODINGS["counts"]), (4, 4), (True, True))
    assert torch.equal(counts([x, x], None)[0][0], plain([x, x], None)[0][0])
    with torch.no_grad():
        counts.log_threshold.copy_(torch.tensor([0.0, math.log(2.0)]))
    (same, doubled), (_, scale), _, _ = counts([x, x], None)
    assert same.equal(plain([x, x], None)[0][0])
    # theta 2 and 8/3: [0.15, -0.6, 2.25, 0] and [0.75, 0.75, 0.75, -0.75] round (half to even) to:
    assert doubled[0].tolist() == [[0, -1, 2, 0], [1, 1, 1, -1]]
    assert scale.flatten().tolist() == pytest.approx([2.0, 8 / 3])

    a = torch.tensor([[[0.6], [0.6], [0.6], [2.0]]])
    binary = InputSpikes(tiny_config(**{**ENCODINGS["binary-learned"], "lif_threshold": 0.5}), (1, 1), (True, True))
    with torch.no_grad():
        binary.log_threshold.copy_(torch.tensor([math.log(2.0), 0.0]))
    (high, low), _, membrane, _ = binary([a, a], None)
    # threshold 1 (h 0.3, 0.45, 0.525, 1.2625) and 0.5 (h 0.3, 0.45, 0.525 spike -> 0, 1.0 spike)
    assert high.flatten().tolist() == [0, 0, 0, 1] and low.flatten().tolist() == [0, 0, 1, 1]
    assert membrane.tolist() == [[0.0, 0.0]]


def test_learned_threshold_gradient_is_the_derivative_of_its_primitive():
    """d/da of a projection of learned-threshold counts, W (θ s) with θ = exp(a) mean|x| / k, against central
    differences of the same expression with θ s replaced by its primitive (``lsq_primitive``) held at a."""
    torch.manual_seed(0)
    config = tiny_config(**ENCODINGS["counts-learned"])
    encoder = InputSpikes(config, (16,), (True,)).double()
    with torch.no_grad():
        encoder.log_threshold.fill_(0.3)
    x = torch.randn(2, 5, 16, dtype=torch.float64) * 3
    weight = torch.randn(7, 16, dtype=torch.float64)
    grad_out = torch.randn(2, 5, 7, dtype=torch.float64)
    (counts,), (scale,), _, _ = encoder([x], None)
    (grad,) = torch.autograd.grad(((counts @ weight.T) * scale * grad_out).sum(), encoder.log_threshold)

    mean = x.abs().mean(dim=-1, keepdim=True) / config.spike_count_scale
    at = torch.exp(torch.tensor(0.3, dtype=torch.float64)) * mean

    def primitive(a: float) -> torch.Tensor:
        theta = math.exp(a) * mean
        encoded = lsq_primitive(x, theta, at, -config.spike_count_max, config.spike_count_max)
        return ((encoded @ weight.T) * grad_out).sum()

    h = 1e-6
    finite = (primitive(0.3 + h) - primitive(0.3 - h)) / (2 * h)
    assert float(grad) != 0.0
    torch.testing.assert_close(grad, finite.reshape(1), rtol=1e-6, atol=1e-9)
    # LSQ's step-size gradient, elementwise: s - x/θ inside -K..K, s outside
    u = x / at
    inside = (u >= -config.spike_count_max) & (u <= config.spike_count_max)
    lsq = torch.where(inside, counts - u, counts)
    torch.testing.assert_close(grad, ((lsq @ weight.T) * grad_out * at).sum().reshape(1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("encoding", ["counts-learned", "binary-learned"])
def test_the_traced_decoding_step_uses_the_learned_thresholds(encoding, seed):
    """The engine's and generate()'s recorded step computes what the forward computes, learned thresholds and all."""
    model = driven_model(seed, encoding)
    assert any(float(p.detach().abs().max()) > 0.1 for n, p in model.named_parameters() if n.endswith("log_threshold"))
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.inference_mode():
        state = model(ids[:, :5], use_cache=True).state
        step = trace_decode_step(model, ids[:, 5:], state)
        logits, new_state, _ = step(ids[:, 5:], state)
        eager = model(ids[:, 5:], state=state)
    assert torch.equal(logits, eager.logits[:, -1])
    assert all(torch.equal(a, b) for a, b in zip(new_state.tensors(), eager.state.tensors(), strict=True))


def test_binary_encoder_by_hand():
    """LIF, tau 2, threshold 1, hard reset, on two inputs side by side with one membrane each."""
    config = tiny_config(**{**ENCODINGS["binary"], "lif_threshold": 1.0})
    a = torch.tensor([[[0.6], [0.6], [0.6], [2.0]]])  # h: 0.3, 0.45, 0.525, 1.2625 -> spike at the last token
    b = torch.tensor([[[2.0], [0.0], [3.0], [-1.0]]])  # h: 1.0 spike (reset 0), 0, 1.5 spike, -0.5
    (sa, sb), scales, membrane, reads = InputSpikes(config, (1, 1), (True, True))([a, b], None)
    assert sa.flatten().tolist() == [0, 0, 0, 1] and sb.flatten().tolist() == [1, 0, 1, 0]
    assert scales == [None, None]
    assert membrane.tolist() == [[0.0, -0.5]]
    assert reads.tolist() == [[[1, 1], [2, 2]]]


def test_spike_count_gradient_is_the_derivative_of_its_primitive():
    u = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    u = u[(u.abs() - 3).abs() > 1e-3]  # away from the clip's corners, where the primitive has no derivative
    x = u.clone().requires_grad_()
    (grad,) = torch.autograd.grad(spike_count(x, -3, 3).sum(), x)
    h = 1e-6
    finite = (count_primitive(u + h, -3, 3) - count_primitive(u - h, -3, 3)) / (2 * h)
    torch.testing.assert_close(grad, finite, rtol=0, atol=1e-8)
    assert grad.min() == 0 and grad.max() == 1
    assert spike_count(u, -3, 3).equal(torch.round(u).clamp(-3, 3))


class MatrixProducts(TorchDispatchMode):
    """Records the activation operand (and the other operand) of every matrix product the dispatcher runs."""

    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "dot", "mv", "linear"}

    def __init__(self):
        super().__init__()
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.PRODUCTS:
            activation, weight = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            self.inputs.append((activation.detach().clone(), weight))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_product_but_the_head_reads_whole_numbers(encoding, seed):
    model = driven_model(seed, encoding)
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    with torch.inference_mode(), MatrixProducts() as products:
        model(ids)
    vocab = model.config.vocab_size
    head = [a for a, w in products.inputs if vocab in w.shape]  # (linear: [out, in]; mm: [in, out])
    blocks = [a for a, w in products.inputs if vocab not in w.shape]
    assert len(head) == 1 and len(blocks) == 7 * model.config.n_layer
    assert not torch.equal(head[0], head[0].round())  # the head reads real LayerNorm outputs
    for activation in blocks:
        assert torch.equal(activation, activation.round())
        assert (activation != 0).any() and (activation == 0).any()
        if model.config.input_spikes == "binary":
            assert set(activation.unique().tolist()) <= {0.0, 1.0}
        else:
            assert activation.abs().max() <= model.config.spike_count_max


def test_residual_placement_products_read_real_values(seed):
    """The published placement, for contrast: the products read LayerNorm outputs."""
    torch.manual_seed(seed)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed).eval()
    with torch.inference_mode(), MatrixProducts() as products:
        model(torch.randint(0, model.config.vocab_size, (2, 7)))
    assert sum(not torch.equal(a, a.round()) for a, _ in products.inputs) >= 6 * model.config.n_layer


class LinearReads:
    """What every block projection was given, counted independently of the model's own counters."""

    def __init__(self, model):
        self.reads: dict[str, list[int]] = {}
        self.hooks = [
            module.register_forward_pre_hook(self.hook(name))
            for name, module in model.model.named_modules()
            if isinstance(module, torch.nn.Linear)
        ]

    def hook(self, name):
        def record(module, args):
            x = args[0]
            seen = self.reads.setdefault(name, [0, 0])
            seen[0] += int((x != 0).sum())
            seen[1] += int(x.abs().sum()) if torch.equal(x, x.round()) else 0

        return record

    def remove(self):
        for hook in self.hooks:
            hook.remove()


@pytest.mark.parametrize("placement", ["residual", "binary", "counts"])
def test_reads_are_what_the_products_were_given(placement, seed):
    overrides = {} if placement == "residual" else ENCODINGS[placement]
    torch.manual_seed(seed)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(**overrides)), seed).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 13))
    seen = LinearReads(model)
    try:
        with torch.inference_mode():
            stats = model(ids, output_spike_stats=True).spike_stats
    finally:
        seen.remove()
    assert stats.reads.dtype == torch.long and stats.counts.dtype == torch.long
    measured = stats.reads.sum(dim=0).tolist()
    for name, read in zip(model.model.projections, measured, strict=True):
        want = seen.reads[name]
        if placement == "residual":
            assert read == [want[0], 0]  # real inputs: nonzero elements only
        else:
            assert read == want
