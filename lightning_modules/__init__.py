"""LightningModules for every training mode, and the model zoo."""

from lightning_modules.adversarial import AdversarialClassifier
from lightning_modules.classifier import ImageClassifier
from lightning_modules.zoo import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "AdversarialClassifier", "ImageClassifier", "build_model"]
