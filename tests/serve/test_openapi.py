"""The OpenAPI document describes every request body, status and media type: schemathesis generates requests
from it, valid ones and invalid ones, sends them to a real server and checks each answer against the document
(and that an invalid request is refused).

Bounded: a few examples per operation and mode, on a server whose caps keep every generation short."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serve_helpers import run_server, tiny_settings

from spikegpt.serve.app import create_app
from spikegpt.serve.settings import ServeSettings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", 12))  # more for a deeper search

# the document of an app that is not started (nothing is loaded): the same routes a running server documents
SCHEMA = schemathesis.openapi.from_dict(create_app(ServeSettings()).openapi())
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
# invalid requests for the operations that take a body (a path parameter may be any string)
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label, op in sorted(OPERATIONS.items()) if "requestBody" in op.definition.raw
]


@pytest.fixture(scope="module")
def api_server(tiny_model_dir):
    caps = dict(max_tokens_cap=4, max_prompt_tokens=32, max_batch=4, max_queue=8)
    with run_server(tiny_settings(tiny_model_dir, **caps)) as server:
        yield server


def test_the_served_document_is_the_one_tested(api_server):
    with api_server.client() as client:
        assert client.get("/openapi.json").json() == SCHEMA.raw_schema


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_every_answer_conforms_to_the_openapi_document(api_server, label, mode):
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    # derandomized: the same examples every run (a failure reproduces; CI never flakes on a new draw)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
    )
    def check(case):
        case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=30)

    check()
