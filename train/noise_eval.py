"""``spikegpt eval --weight-noise SIGMA``: bits per byte of a model whose weights sit in noisy RRAM crossbars,
over several seeded draws of the device model in ``spikegpt.quant.noise`` (one draw = one programmed chip)."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass

from spikegpt.quant.noise import NOISE_KINDS, DeviceModel, programmed_chips

from .evaluate import EvalResult, EvalSet, evaluate


@dataclass
class NoiseEvalResult:
    device: dict
    seeds: list[int]
    bits_per_byte: list[float]  # one per draw
    bits_per_byte_mean: float
    bits_per_byte_std: float  # sample standard deviation over the draws (0 for one draw)
    firing_rate_mean: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_with_noise(
    model, eval_set: EvalSet, device: DeviceModel, draws: int, seed: int, batch_size: int, progress: bool = True
) -> NoiseEvalResult:
    """``evaluate`` once per programmed chip; the model's clean weights are restored afterwards."""
    seeds, results = [], []
    with programmed_chips(model, device, draws, seed) as chips:
        for chip in chips:
            seeds.append(chip)
            results.append(evaluate(model, eval_set, batch_size, progress=progress))
    return summarise(device, seeds, results)


def summarise(device: DeviceModel, seeds: list[int], results: list[EvalResult]) -> NoiseEvalResult:
    bpb = [r.bits_per_byte for r in results]
    return NoiseEvalResult(
        device=device.describe(),
        seeds=seeds,
        bits_per_byte=bpb,
        bits_per_byte_mean=statistics.fmean(bpb),
        bits_per_byte_std=statistics.stdev(bpb) if len(bpb) > 1 else 0.0,
        firing_rate_mean=statistics.fmean(r.firing_rate for r in results),
    )


def add_weight_noise_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "memristive weight noise (the device model of spikegpt.quant.noise: crossbar tiles, differential pairs)"
    )
    group.add_argument(
        "--weight-noise",
        type=float,
        metavar="SIGMA",
        default=None,
        help="evaluate with the weights programmed into noisy RRAM tiles: SIGMA is the conductance variation "
        "(lognormal: std of ln G'/G; gaussian: std relative to the tile's largest conductance); reports bits per "
        "byte as mean ± std over --noise-draws chips",
    )
    group.add_argument(
        "--noise-model",
        choices=NOISE_KINDS,
        default="lognormal",
        help="multiplicative lognormal or additive Gaussian conductance variation (default: lognormal)",
    )
    group.add_argument(
        "--stuck-at-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction of devices stuck at G_min or G_max (half each unless --stuck-on-fraction) (default: 0)",
    )
    group.add_argument(
        "--stuck-on-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="of the stuck devices, the fraction stuck at G_max (the rest at G_min) (default: 0.5)",
    )
    group.add_argument(
        "--conductance-levels",
        type=int,
        default=None,
        metavar="L",
        help="programmable conductance levels per device (>= 2); |w| snaps to L evenly spaced values of its "
        "tile's range before the noise (default: continuous)",
    )
    group.add_argument(
        "--tile-size", type=int, default=256, metavar="N", help="crossbar tiles of N x N weights (default: 256)"
    )
    group.add_argument("--noise-draws", type=int, default=5, metavar="K", help="programmed chips to draw (default: 5)")
    group.add_argument(
        "--noise-seed", type=int, default=0, help="seed of the first draw; draw i uses seed + i (default: 0)"
    )


def device_model_from_args(args: argparse.Namespace) -> DeviceModel:
    return DeviceModel(
        sigma=args.weight_noise,
        kind=args.noise_model,
        stuck_rate=args.stuck_at_rate,
        stuck_on_fraction=args.stuck_on_fraction,
        levels=args.conductance_levels,
        tile_size=args.tile_size,
    )
