"""`spikegpt serve --weight-bits` / SPIKEGPT_WEIGHT_BITS: validated with the other settings, passed to the loader."""

from __future__ import annotations

import pytest

from spikegpt.serve.settings import ServeSettings, SettingsError


def test_weight_bits_come_from_the_variable_and_are_checked():
    assert ServeSettings.from_env({"SPIKEGPT_WEIGHT_BITS": "8"}).weight_bits == 8
    assert ServeSettings.from_env({}).weight_bits is None
    with pytest.raises(SettingsError, match="weight_bits must be one of 8, 4, 1"):
        ServeSettings.from_env({"SPIKEGPT_WEIGHT_BITS": "3"})


def test_the_serve_flag_reaches_the_settings():
    from spikegpt.cli import build_parser
    from spikegpt.serve.cli import settings_from_args

    args = build_parser().parse_args(["serve", "--weight-bits", "4"])
    assert settings_from_args(args).weight_bits == 4


def test_a_served_8_bit_model_decodes_with_int8_products_and_event_driven_ones_give_the_same_text():
    """Real servers (HTTP on a free port) of the spike-driven bundled model at 8 bits: every product int8 in the
    engine's step, composed with event-driven ones under --decode sparse, and the same greedy completions."""
    from serve_helpers import run_server, tiny_settings

    from spikegpt import bundled_model_path
    from spikegpt.quant.grids import quantized_linears

    body = {"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0.0}
    texts = {}
    for decode in ("dense", "sparse"):
        settings = tiny_settings(bundled_model_path("spikegpt-shakespeare-driven"), weight_bits=8, decode=decode)
        with run_server(settings) as server, server.client() as client:
            modes = server.host.worker.engine.runner.products.modes
            assert len(modes) == len(list(quantized_linears(server.host.model))) and all(m.int8 for m in modes.values())
            assert any(m.event_driven for m in modes.values()) == (decode == "sparse")
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            texts[decode] = response.json()["choices"][0]["text"]
    assert texts["sparse"] == texts["dense"] and len(texts["dense"]) > 10
