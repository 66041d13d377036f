"""The memristive device model: reproducible draws with the requested statistics, tiles, levels, faults."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from quantize_helpers import tiny_model

from spikegpt.errors import ConfigError
from spikegpt.quant.grids import quantized_linears
from spikegpt.quant.noise import DeviceModel, program_weight, programmed_chips, tile_max

N = 400  # a 400 x 400 matrix: 160,000 devices, so sample statistics sit within ~0.5% of the parameters


def weights(seed: int = 0) -> torch.Tensor:
    w = torch.randn(N, N, generator=torch.Generator().manual_seed(seed))
    return torch.where(w.abs() < 1e-3, torch.full_like(w, 1e-3), w)  # no zeros: every device carries a weight


def draw(device: DeviceModel, w: torch.Tensor, seed: int) -> torch.Tensor:
    return program_weight(w, device, torch.Generator().manual_seed(seed))


def test_draws_are_reproducible_by_seed_and_differ_between_seeds():
    w, device = weights(), DeviceModel(sigma=0.2, stuck_rate=0.01, levels=32)
    assert torch.equal(draw(device, w, 7), draw(device, w, 7))
    assert not torch.equal(draw(device, w, 7), draw(device, w, 8))


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_lognormal_variation_has_the_requested_spread_and_keeps_signs(sigma):
    w = weights(1)
    ratio = draw(DeviceModel(sigma=sigma, kind="lognormal"), w, 0) / w
    assert (ratio > 0).all()  # multiplicative: a weight never changes sign
    log_ratio = ratio.log()
    assert abs(float(log_ratio.mean())) < 4 * sigma / math.sqrt(N * N)  # mean 0 within 4 standard errors
    assert float(log_ratio.std()) == pytest.approx(sigma, rel=0.01)


def test_gaussian_variation_is_additive_relative_to_the_tile_range():
    w = weights(2)
    device = DeviceModel(sigma=0.05, kind="gaussian", tile_size=100)
    relative = (draw(device, w, 0) - w) / tile_max(w, 100)
    assert abs(float(relative.mean())) < 4 * 0.05 / N
    assert float(relative.std()) == pytest.approx(0.05, rel=0.01)


def test_stuck_at_faults_hit_the_requested_fraction_at_g_min_or_g_max():
    w = weights(3)
    device = DeviceModel(sigma=0.0, stuck_rate=0.05, stuck_on_fraction=0.3, tile_size=128)
    out, w_max = draw(device, w, 0), tile_max(w, 128)
    stuck_off, stuck_on = out == 0, (out.abs() == w_max) & (w.abs() != w_max)
    assert float((stuck_off | stuck_on).float().mean()) == pytest.approx(0.05 * (1 - 0.3 / (N * N)), rel=0.03)
    assert float(stuck_on.float().sum() / (stuck_off | stuck_on).float().sum()) == pytest.approx(0.3, rel=0.05)
    assert torch.equal(torch.sign(out[stuck_on]), torch.sign(w[stuck_on]))  # stuck on keeps the weight's sign
    untouched = ~(stuck_off | stuck_on)
    assert torch.equal(out[untouched], w[untouched])  # no variation asked: the rest are exact


def test_tiles_and_conductance_levels():
    w = torch.tensor([[1.2, -2.0, 0.5], [0.1, 4.0, -0.3], [0.2, 0.1, -0.9]])
    assert torch.equal(tile_max(w, 2), torch.tensor([[4.0, 4.0, 0.5], [4.0, 4.0, 0.5], [0.2, 0.2, 0.9]]))
    out = program_weight(w, DeviceModel(sigma=0.0, levels=3, tile_size=2), torch.Generator().manual_seed(0))
    # levels {0, w_max/2, w_max} per tile, signs kept
    expected = torch.tensor([[2.0, -2.0, 0.5], [0.0, 4.0, -0.25], [0.2, 0.1, -0.9]])
    assert torch.equal(out, expected)


def test_programmed_chips_give_each_draw_from_the_clean_weights_and_restore_them():
    model = tiny_model()
    clean = {name: linear.weight.clone() for name, linear in quantized_linears(model)}
    seen = []
    with programmed_chips(model, DeviceModel(sigma=0.1), draws=3, seed=10) as chips:
        for seed in chips:
            seen.append((seed, model.head.weight.clone()))
    assert [s for s, _ in seen] == [10, 11, 12]
    expected = program_weight(clean["head"], DeviceModel(sigma=0.1), torch.Generator().manual_seed(10))
    # the head is the last product drawn: the generator has advanced past the blocks' weights
    assert not torch.equal(seen[0][1], seen[1][1])
    assert seen[0][1].shape == expected.shape
    for name, linear in quantized_linears(model):
        assert torch.equal(linear.weight, clean[name]), name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sigma": -0.1}, "sigma must be a finite number"),
        ({"sigma": 0.1, "kind": "uniform"}, "noise model must be one of"),
        ({"sigma": 0.1, "stuck_rate": 1.5}, "stuck-at fault rate"),
        ({"sigma": 0.1, "levels": 1}, "at least 2 conductance levels"),
        ({"sigma": 0.1, "tile_size": 0}, "tile size"),
    ],
)
def test_bad_device_models_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        DeviceModel(**options)


def test_eval_with_weight_noise_reports_mean_and_std_over_draws(tmp_path, capsys, monkeypatch):
    import json

    from spikegpt.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "play.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 40)
    args = ["eval", "--dataset", str(text), "--max-blocks", "2", "--json", "--weight-noise", "0.2"]
    assert main([*args, "--noise-draws", "3", "--noise-seed", "4", "--weight-bits", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["seeds"] == [4, 5, 6] and result["weight_bits"] == 8 and result["device"]["sigma"] == 0.2
    bpb = result["bits_per_byte"]
    assert result["bits_per_byte_mean"] == pytest.approx(sum(bpb) / 3)
    assert result["bits_per_byte_std"] == pytest.approx(statistics.stdev(bpb))  # the sample std over draws
    assert main([*args, "--noise-draws", "0"]) == 1
    assert "--noise-draws must be at least 1" in capsys.readouterr().err
