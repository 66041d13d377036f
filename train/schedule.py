"""Per-step schedules, pure functions of the step so that a resumed run follows them exactly."""

from __future__ import annotations

import math


def learning_rate(
    step: int, peak: float, minimum: float, warmup_steps: int, decay_steps: int, cycles: int = 1
) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``minimum`` at ``decay_steps``
    (and ``minimum`` after it). ``step`` counts optimizer steps taken, so the first update uses ``learning_rate(0)``.

    ``cycles`` > 1 splits the decay into that many equal cosine cycles, each restarting at ``peak`` (warm restarts,
    Loshchilov & Hutter, SGDR, ICLR 2017), as the quantized-SNN work trains low-precision weights: a restart lets
    weights stuck next to a rounding boundary cross it (Eshraghian et al., "Navigating local minima in quantized
    spiking neural networks", AICAS 2022)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if step >= decay_steps:
        return minimum
    span = max(decay_steps - warmup_steps, 1) / cycles
    progress = ((step - warmup_steps) % span) / span
    return minimum + 0.5 * (peak - minimum) * (1.0 + math.cos(math.pi * progress))


def ramp(step: int, start: float | None, target: float, steps: int, geometric: bool = False) -> float:
    """``start`` at step 0 to ``target`` at ``steps`` and after, linearly (or ``geometric``: by the same factor
    every step, for a quantity that acts as a multiplier); None: ``target`` throughout."""
    if start is None or step >= steps:
        return target
    if geometric:
        return start * (target / start) ** (step / steps)
    return start + (target - start) * step / steps


def lif_threshold(step: int, start: float | None, target: float, anneal_steps: int) -> float:
    """Threshold annealing (Eshraghian et al.): the LIF threshold ramps linearly from ``start`` to ``target`` over
    ``anneal_steps``, so early training sees more spikes and hence more surrogate gradient; None: ``target``."""
    return ramp(step, start, target, anneal_steps)


def spike_count_scale(step: int, start: float | None, target: float, anneal_steps: int) -> float:
    """The counts' k (θ = mean|x| / k) from ``start`` to ``target`` geometrically over ``anneal_steps``: a large k
    first (fine steps, few zeros: dense), the target's coarser steps last (sparse); θ moves by the same factor
    every step."""
    return ramp(step, start, target, anneal_steps, geometric=True)


def spike_count_max(step: int, start: int | None, target: int, anneal_steps: int) -> int:
    """The counts' K from ``start`` to ``target`` linearly over ``anneal_steps``, at the nearest whole number (a
    half goes to the target's side): K 4 → 1 over 300 steps is 4, 3, 2, 1 from steps 0, 50, 150, 250."""
    value = ramp(step, start, target, anneal_steps)
    rising = start is None or target >= start
    return math.floor(value + 0.5) if rising else math.ceil(value - 0.5)


def weight_warmup(step: int, weight: float, warmup_steps: int) -> float:
    """A loss term's weight, ramped linearly from 0 to ``weight`` over ``warmup_steps`` (0: ``weight`` at once)."""
    return ramp(step, 0.0 if warmup_steps else None, weight, warmup_steps)
