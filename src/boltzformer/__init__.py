"""boltzformer: text-promptable segmentation of small objects with Boltzmann attention sampling.

Public API::

    import boltzformer
    model = boltzformer.build_model("tiny")                   # an nn.Module
    out = model(images, ["lung nodule in CT scan"])           # images: (B, 3, H, W), 0-255
    model = boltzformer.load_checkpoint("run/last.ckpt")      # a trained model
    mask = boltzformer.Predictor(model).predict(image, "lung nodule in CT scan")
"""

from boltzformer.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from boltzformer.config import ModelConfig, TrainConfig, get_preset
from boltzformer.model import BoltzFormer, BoltzFormerOutput, build_model
from boltzformer.predict import Predictor

__version__ = "0.1.0"

__all__ = [
    "BoltzFormer",
    "BoltzFormerOutput",
    "CheckpointError",
    "Predictor",
    "load_checkpoint",
    "save_checkpoint",
    "ModelConfig",
    "TrainConfig",
    "build_model",
    "get_preset",
    "__version__",
]
