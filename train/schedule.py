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


def lif_threshold(step: int, start: float | None, target: float, anneal_steps: int) -> float:
    """Threshold annealing (Eshraghian et al.): the LIF threshold ramps linearly from ``start`` to ``target`` over
    ``anneal_steps``, so early training sees more spikes and hence more surrogate gradient; None: ``target``."""
    if start is None or step >= anneal_steps:
        return target
    return start + (target - start) * step / anneal_steps
