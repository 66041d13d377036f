"""The quickstart page, run as a reader runs it: its server command starts a real ``spikegpt serve`` (on a free
port), the Python blocks run in one Python interpreter (in order, so later blocks use the names earlier ones
defined, as in a session) and then the shell blocks in bash, in order, all in one scratch directory; each output
the page shows is checked against what came out. The page's conventions: ``doc_examples``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from doc_examples import PAGE_ADDRESS, Example, output_matches, page_examples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # the serving tests' helpers
from spikegpt.serve.testing import ServerProcess

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
BLOCK_END = "\n=== end of block ===\n"  # printed after each Python block, to tell their outputs apart


def corpus(directory: Path) -> None:
    """The page downloads Tiny Shakespeare; the test has no network: the shared copy, or a text of its own."""
    shared = SHARED_DATA / "tinyshakespeare" / "input.txt"
    text = shared.read_text() if shared.is_file() else "ROMEO: To be, or not to be, that is the question.\n" * 20_000
    (directory / "input.txt").write_text(text)


def run_shell(example: Example, cwd: Path, env: dict) -> str:
    result = subprocess.run(
        ["bash", "-c", example.code], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"quickstart.md:{example.line} failed:\n{result.stdout}"
    return result.stdout


def run_python(examples: list[Example], cwd: Path, env: dict) -> list[str]:
    """Every Python block in one interpreter; the output of each."""
    program = "".join(f"exec(compile({e.code!r}, 'quickstart.md:{e.line}', 'exec'))\nprint({BLOCK_END!r}, end='')\n"
                      for e in examples)  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split(BLOCK_END)[: len(examples)]


def check(example: Example, output: str, address: str) -> None:
    if example.output is None:
        return
    expected = example.output.replace(PAGE_ADDRESS, address)
    assert output_matches(expected, output), (
        f"quickstart.md:{example.line}: the page shows\n{expected}\n--- but it printed\n{output}"
    )


TRAINING = "Train a model of your own"  # the section that needs no server (and the most time): a test of its own


def run_and_check(examples: list[Example], cwd: Path, address: str) -> None:
    """Run the examples (Python blocks in one interpreter, then shell blocks) and check the outputs shown."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for example in examples:
        example.code = example.code.replace(PAGE_ADDRESS, address)
    python = [e for e in examples if e.language == "python"]
    for example, output in zip(python, run_python(python, cwd, env) if python else [], strict=True):
        check(example, output, address)
    for example in (e for e in examples if e.language == "bash"):
        check(example, run_shell(example, cwd, env), address)


def test_the_serving_and_energy_examples(tmp_path):
    examples = [e for e in page_examples(QUICKSTART) if e.section != TRAINING]
    if any("| jq" in e.code for e in examples) and shutil.which("jq") is None:
        pytest.skip("jq is not installed, and the page's curl example pipes into it (apt-get install jq)")
    (server_example,) = [e for e in examples if e.mark == "server"]
    args = server_example.code.split()
    assert args[:2] == ["spikegpt", "serve"], server_example.code
    server = ServerProcess(*args[2:])
    try:
        address = server.wait_ready().removeprefix("http://")
        check(server_example, "".join(server.log), address)
        run_and_check([e for e in examples if e.mark is None], tmp_path, address)
    finally:
        server.stop()


def test_the_training_examples(tmp_path):
    corpus(tmp_path)
    examples = [e for e in page_examples(QUICKSTART) if e.section == TRAINING]
    assert any("spikegpt train" in e.code for e in examples)
    run_and_check([e for e in examples if e.mark is None], tmp_path, PAGE_ADDRESS)


def test_the_page_marks_only_what_it_must():
    """Only the installation and the download stay out of the test; every other block runs, and the outputs
    that follow an example are all checked (a misplaced output block would be an example's silently)."""
    examples = page_examples(QUICKSTART)
    assert TRAINING in {e.section for e in examples}
    skipped = [e.code for e in examples if e.mark == "skip"]
    assert len(skipped) == 2 and "pip install" in skipped[0] and "curl" in skipped[1]
    assert [e.mark for e in examples].count("server") == 1
    assert sum(e.output is not None for e in examples) >= 7
    assert {e.mark for e in examples} <= {None, "skip", "server"}


@pytest.mark.parametrize(
    ("expected", "actual", "fits"),
    [
        ("a\n...\nd", "a\nb\nc\nd\n", True),
        ("a\n...\nd", "a\nd", True),
        ("rate ...", "rate 0.221", True),
        ("took ... s, done", "took 1.5 s, done", True),
        ("took ... s, done", "took 1.5 s, failed", False),
        ("a\nb", "a\nb\nc", False),
        ("...", "anything\nat all", True),
        ("\nx", "\nx\n", True),
    ],
)
def test_the_wildcards_of_the_output_blocks(expected, actual, fits):
    assert output_matches(expected, actual) is fits
