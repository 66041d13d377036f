"""The per-request ``energy`` field carries the weight bytes each layer read and their energy (data movement) beside
the operations, for the model and every baseline: bytes equal the hand count of the tokens the request processed."""

from __future__ import annotations

import pytest

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures


def test_the_energy_field_carries_bytes_read_equal_to_the_hand_count(client, server):
    config = server.host.config
    d, hidden, vocab, n_layer = config.n_embd, config.ffn_hidden, config.vocab_size, config.n_layer
    body = {"prompt": "Weights are read", "max_tokens": 6, "n": 2, "seed": 4, "ignore_eos": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    energy = response.json()["energy"]
    tokens = energy["tokens"]
    fp32 = 4  # the default profile (45nm-fp32) reads float weights at 32 bits
    # dense reading: every row of every product for every token the request processed
    att = tokens * 4 * d * d * fp32
    ffn = tokens * (d * hidden + d * d + hidden * d) * fp32
    stored = fp32 * (vocab * d + n_layer * (4 * d * d + 2 * d * hidden + d * d) + d * vocab)
    assert stored <= 2**20  # the tiny model fits the profile's 1 MiB SRAM
    for rule, report in energy["rules"].items():
        head = report["head_tokens"] * d * vocab * fp32
        layers = {layer["name"]: layer for layer in report["layers"]}
        assert layers["embedding"]["weight_bytes"] == tokens * d * fp32  # one row per token
        assert layers["head"]["weight_bytes"] == head
        for i in range(n_layer):
            dense = (att, ffn)
            read = (layers[f"blocks.{i}.att"]["weight_bytes"], layers[f"blocks.{i}.ffn"]["weight_bytes"])
            if rule == "event":  # the zeros of relu(k)² are skipped; LayerNorm outputs and gates are never zero
                assert read[0] == att and ffn - tokens * hidden * d * fp32 <= read[1] < ffn
            else:
                assert read == dense
        assert report["weight_memory"] == "sram" and report["stored_weight_bytes"] == stored
        assert report["weight_bytes"] == sum(layer["weight_bytes"] for layer in report["layers"])
        assert report["data_movement_j"] == pytest.approx(report["weight_bytes"] * 12.5e-12)
        assert report["total_j"] == pytest.approx(report["energy_j"] + report["data_movement_j"])
        generated = energy["generated_tokens"]
        assert report["total_j_per_generated_token"] == pytest.approx(report["total_j"] / generated)
        for baseline in report["baselines"].values():
            assert baseline["weight_bytes"] > 0
            assert baseline["total_j"] == pytest.approx(baseline["energy_j"] + baseline["data_movement_j"])
        assert report["baselines"]["spiking_off"]["weight_bytes"] == tokens * d * fp32 + n_layer * (att + ffn) + head
