"""SpikeGPT: a spiking RWKV-4 language model in the Hugging Face ecosystem.

Importing the package registers ``SpikeGPTConfig`` and the models with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM`` (model_type ``"spikegpt"``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .config import SpikeGPTConfig
from .errors import CheckpointError, ConfigError, GenerationError, SpikeGPTError, TokenizerError
from .model import SpikeGPTCausalLMOutput, SpikeGPTForCausalLM, SpikeGPTModel
from .state import RecurrentState
from .stats import SpikeStats

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "RecurrentState",
    "SpikeGPTCausalLMOutput",
    "SpikeGPTConfig",
    "SpikeGPTError",
    "SpikeGPTForCausalLM",
    "SpikeGPTModel",
    "SpikeStats",
    "TokenizerError",
]

AutoConfig.register("spikegpt", SpikeGPTConfig, exist_ok=True)
AutoModel.register(SpikeGPTConfig, SpikeGPTModel, exist_ok=True)
AutoModelForCausalLM.register(SpikeGPTConfig, SpikeGPTForCausalLM, exist_ok=True)
