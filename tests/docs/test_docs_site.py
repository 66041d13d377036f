"""The documentation site: it builds with ``mkdocs build --strict`` (a missing page, a broken link or anchor, a
missing snippet or a page left out of the navigation fails), its tables of measurements are those the committed
results give now, every result says where and when it was measured, and the README stays a short front door whose
links all lead somewhere."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def gen_figures():
    spec = importlib.util.spec_from_file_location("gen_figures", ROOT / "docs" / "gen_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=tmp_path,  # the configuration finds its files by its own place, not the working directory
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING" not in log, log
    assert (tmp_path / "quickstart" / "index.html").is_file()
    reference = (tmp_path / "reference" / "kernels" / "index.html").read_text()
    assert "sparse_linear" in reference, "the API reference was not generated from the docstrings"


def test_the_generated_tables_are_current(capsys):
    assert gen_figures().main(["--check"]) == 0, capsys.readouterr().err


def test_every_result_says_where_and_when_it_was_measured():
    figures = gen_figures()
    for path in sorted(RESULTS.glob("*.json*")):
        if path.name == "provenance.json":
            continue
        machine, date = figures.provenance(path.name)
        assert machine and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), (path.name, machine, date)
    listed = set(json.loads((RESULTS / "provenance.json").read_text())["results"])
    assert listed <= {p.name for p in RESULTS.iterdir()}, "provenance.json names a result that is not there"


def test_the_readme_is_short_and_its_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "the README links to no page of the documentation"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing
    docs = {t for t in local if t.startswith("docs/")}
    assert len(docs) >= 10, "the README should link to each guide"


def test_the_readme_keeps_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert 'python3 -m pip install -e ".[serve]" -c constraints.txt && spikegpt serve' in readme
    assert 'python3 -m pip install -e ".[test]" -c constraints.txt && pytest' in readme


def test_the_field_lists_of_docstrings():
    spec = importlib.util.spec_from_file_location("griffe_field_lists", ROOT / "docs" / "griffe_field_lists.py")
    module = importlib.util.module_from_spec(spec)
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    spec.loader.exec_module(module)
    text = "Summary: a sentence.\n\nShape:\n    a, b: the sizes,\n        wrapped.\n    c: more.\nAfter the list."
    assert module.field_lists(text) == (
        "Summary: a sentence.\n\n\n**Shape**\n\n- `a`, `b`: the sizes, wrapped.\n- `c`: more.\n\nAfter the list."
    )


def test_the_user_documentation_speaks_of_features_not_of_project_goals():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        found = re.search(r"\b(goals?|issues?)\b|measured earlier", page.read_text(), re.IGNORECASE)
        assert found is None, f"{page.relative_to(ROOT)}: {found.group(0)!r}"
