"""vargen: fast sampling for visual autoregressive image generators."""
import os

# idle OpenMP threads must not spin on a shared CPU (see vargen.runtime); only takes effect before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .samplers import get_sampler
from .samplers.base import GenerationOutput, SamplingConfig, Stats

__version__ = "0.1.0"


def load(name_or_path, **kwargs):
    """Load a pipeline (tokenizer + model + defaults) from a zoo name or a local path."""
    from .pipeline import load as _load

    return _load(name_or_path, **kwargs)


def __getattr__(name):
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)


__all__ = ["load", "Pipeline", "get_sampler", "SamplingConfig", "GenerationOutput", "Stats"]
