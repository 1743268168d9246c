"""The BoltzFormer network: image encoder -> pixel decoder -> Boltzmann decoder -> PiGMA."""

from boltzformer.model.boltzformer import BoltzFormer, BoltzFormerOutput, ImageFeatures, build_model

__all__ = ["BoltzFormer", "BoltzFormerOutput", "ImageFeatures", "build_model"]
