"""Print what the CPU image installs besides the package: the requirements of ``spikegpt[serve]`` read from
pyproject.toml (so the list has one definition), without torch (installed first, from PyTorch's CPU index) and
triton (it only compiles GPU kernels; the CPU image never runs one)."""

import re
import sys
import tomllib
from pathlib import Path

LEFT_OUT = {"torch", "triton"}


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["serve"]
    return [r for r in wanted if re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() not in LEFT_OUT]


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
