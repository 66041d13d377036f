"""Exceptions of ``spikegpt.kernels`` (which imports nothing from the rest of the package)."""


class KernelError(Exception):
    """Base class of every error the kernels raise on purpose."""


class KernelArgumentError(KernelError, ValueError):
    """A kernel was called with tensors or options it does not accept (shapes, dtypes, devices, names)."""


class KernelUnavailableError(KernelError, RuntimeError):
    """The requested kernel backend cannot run here."""
