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
