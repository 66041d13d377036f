"""The compiled CPU kernels of the 8-bit products (``csrc/int8_cpu.cpp``), built on first use and cached.

torch's extension loader compiles the source once per machine (about ten seconds) into
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and loads it from there afterwards; the build is
for the CPU it runs on (``-march=native``), so its name carries a digest of the CPU's instruction-set flags and a
cache shared between different machines never loads a build for another CPU. Where it cannot be built (no
compiler, no ninja) ``available()`` is False after one warning, and the dispatch runs the PyTorch reference
(``int8_torch``), which gives the same results, slower.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "int8_cpu.cpp"
# -fopenmp: at::parallel_for is OpenMP inside ATen's headers, compiled into the kernels; without it every kernel
# runs on one thread whatever torch.set_num_threads says. Nothing more to link: torch has loaded its libgomp.
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp"]


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


@functools.cache
def available() -> bool:
    """Whether the compiled kernels are loaded (building them the first time); False, after one warning, where
    they cannot be built."""
    try:
        from torch.utils.cpp_extension import load

        load(
            name=f"spikegpt_int8_cpu_{_cpu_signature()}",
            sources=[str(SOURCE)],
            extra_cflags=FLAGS,
            is_python_module=False,
            verbose=False,
        )
        torch.ops.spikegpt_cpu.int8_linear  # noqa: B018  (registered by the library's static initializer)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        logger.warning("the compiled int8 CPU kernels could not be built (%s); 8-bit products run the slower "
                       "PyTorch reference", first_line)
        return False
    return True
