"""Write ``constraints.txt``: the exact versions of every dependency that the README's two set-up commands install.

The dependency policy (README, "Dependencies"): ``pyproject.toml`` states the ranges the project supports; this file
pins the set the test suite last passed on, and the README's commands and CI install with ``-c constraints.txt``, so
a new release of a dependency cannot change what a fresh machine runs. ``scripts/check_newest.sh`` tests the newest
releases the ranges allow in a fresh virtual environment; when it passes, this script moves the pins forward:

    python scripts/update_constraints.py

It asks pip to resolve the project's extras as on an empty machine (``--dry-run --ignore-installed``), so nothing
already installed here leaks in. torch and triton stay out: ``pyproject.toml`` pins them exactly, and their build
(CPU or CUDA) depends on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = "test,bench"  # every extra that some set-up command or CI installs (test includes docs)
PINNED_IN_PYPROJECT = {"spikegpt", "torch", "triton"}
HEADER = """\
# Exact versions the test suite passed on (scripts/update_constraints.py writes this file; see README, "Dependencies").
# pyproject.toml states the supported ranges; installs with `-c constraints.txt` get this tested set on any day.
"""


def resolved_versions() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), "-e", f"{ROOT}[{EXTRAS}]"],
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}
    return sorted((name, version) for name, version in versions.items() if name not in PINNED_IN_PYPROJECT)


def main() -> int:
    lines = [f"{name}=={version}\n" for name, version in resolved_versions()]
    (ROOT / "constraints.txt").write_text(HEADER + "".join(lines))
    print(f"wrote {len(lines)} pins to {ROOT / 'constraints.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
