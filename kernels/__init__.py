"""SpikeGPT's characteristic operations as pure functions on tensors.

``wkv`` (RWKV-4's linear-time attention recurrence), ``lif`` (the multi-step leaky integrate-and-fire neuron) and
``sparse_linear`` (event-driven products: only the weight rows of nonzero inputs) each have a PyTorch reference
(``*_torch.py``) and a Triton kernel (``*_triton.py``). These dispatch functions pick Triton for CUDA tensors and
the reference otherwise, except for one-token WKV and LIF steps (decoding), which take the reference everywhere:
a handful of element-wise operations that a traced or compiled decoding step records with the rest of the step,
where a Triton launch would cost more Python launch overhead than its work and could not be traced.
``int8_linear`` and ``int8_sparse_linear`` are the 8-bit products (int8 codes with one scale per output channel;
dense, and event-driven), defined by ``int8_torch`` and run on a CPU by compiled kernels (``int8_cpu``, built on
first use, with the reference as the fallback), on CUDA for spike counts by Triton.

``SPIKEGPT_KERNELS=torch|triton|auto`` forces a choice; it is read once, at the first dispatch, and cached
(``reload_kernel_backend()`` reads it again).
"""

if __name__ == "kernels":
    # This folder was imported by the top-level name ``kernels``: the root of a repository checkout is on
    # ``sys.path`` (``python -m ...`` or ``accelerate launch -m ...`` run from it), where the folder hides Hugging
    # Face's package of that name, which transformers imports. Hand the name to that package, or fail as if this
    # folder were not there; this code only ever runs as ``spikegpt.kernels``. (The import system returns whatever
    # ``sys.modules`` holds for the name once this file has run.)
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _checkout_root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
    _theirs = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _theirs
    _spec.loader.exec_module(_theirs)
else:
    from .dispatch import (
        int8_linear,
        int8_sparse_linear,
        kernel_backend,
        lif,
        reload_kernel_backend,
        sparse_linear,
        wkv,
    )
    from .errors import KernelArgumentError, KernelError, KernelUnavailableError
    from .lif_torch import LIFParams
    from .wkv_torch import State, fresh_state

    __all__ = [
        "KernelArgumentError",
        "KernelError",
        "KernelUnavailableError",
        "LIFParams",
        "State",
        "fresh_state",
        "int8_linear",
        "int8_sparse_linear",
        "kernel_backend",
        "lif",
        "reload_kernel_backend",
        "sparse_linear",
        "wkv",
    ]
