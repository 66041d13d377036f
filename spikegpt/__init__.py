"""SpikeGPT: a spiking RWKV-4 language model in the Hugging Face ecosystem.

Importing the package registers ``SpikeGPTConfig`` and the models with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM`` (model_type ``"spikegpt"``), and gives ``generate()`` the runtime's traced decoding step.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    GenerationError,
    SpikeGPTError,
    TokenizerError,
    TrainingError,
)
from .hub.checkpoint import bundled_model_path, default_model_path
from .modeling.config import SpikeGPTConfig
from .modeling.model import SpikeGPTCausalLMOutput, SpikeGPTForCausalLM, SpikeGPTModel
from .modeling.state import RecurrentState
from .modeling.stats import SpikeStats
from .runtime.step import generate_step

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "GenerationError",
    "RecurrentState",
    "SpikeGPTCausalLMOutput",
    "SpikeGPTConfig",
    "SpikeGPTError",
    "SpikeGPTForCausalLM",
    "SpikeGPTModel",
    "SpikeStats",
    "TokenizerError",
    "TrainingError",
    "bundled_model_path",
    "default_model_path",
]

AutoConfig.register("spikegpt", SpikeGPTConfig, exist_ok=True)
AutoModel.register(SpikeGPTConfig, SpikeGPTModel, exist_ok=True)
AutoModelForCausalLM.register(SpikeGPTConfig, SpikeGPTForCausalLM, exist_ok=True)
SpikeGPTForCausalLM.decoding_steps = generate_step
