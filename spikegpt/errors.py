"""Typed exceptions of the core library: each message says what is wrong and what to do about it."""

# defined beside the model, whose files checkpoints carry (they import nothing from the rest of the package)
from .modeling.config import ConfigError, SpikeGPTError


class CheckpointError(SpikeGPTError):
    """A checkpoint file or directory is missing, truncated, or does not match the model, or holds values that are
    not numbers. ``name`` is the tensor or config field at fault, when there is one."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


class DeviceError(SpikeGPTError, ValueError):
    """The torch device asked for does not exist or is not available on this machine."""


class TokenizerError(SpikeGPTError):
    """A tokenizer cannot be found, loaded or built."""


class DecodeModeError(SpikeGPTError, ValueError):
    """An unknown decoding mode (``auto``, ``dense``, ``sparse``) or an unreadable crossover file."""


class ProductCombinationError(ConfigError):
    """Two product modes that cannot share a projection (``spikegpt.runtime.products`` decides which combine).

    ``first`` and ``second`` name the two modes."""

    def __init__(self, message: str, first: str, second: str):
        super().__init__(message)
        self.first = first
        self.second = second


class GenerationError(SpikeGPTError, ValueError):
    """A generation request is invalid (bad sampling parameters, empty or too long prompt).

    ``param`` names the offending request field, when there is one (the server reports it to the client).
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class EnergyError(SpikeGPTError, ValueError):
    """An energy estimate cannot be made: unknown rule or profile, a malformed profile file, or statistics that do
    not belong to the model's configuration."""


class DatasetError(SpikeGPTError):
    """A dataset cannot be found or loaded, is empty, or lacks the text field to train on."""


class TrainingError(SpikeGPTError):
    """A training run cannot start or continue (invalid options, nothing to resume from, incompatible checkpoint)."""


class ThreadsError(SpikeGPTError, ValueError):
    """A CPU thread count is invalid (``--threads``, ``threads=``: a whole number of at least 1)."""
