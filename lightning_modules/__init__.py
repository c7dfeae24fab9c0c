"""LightningModules for every training mode (normal, PGD-adversarial, asymmetric-bound-guided) and the model zoo."""

from lightning_modules.adversarial import AdversarialClassifier
from lightning_modules.bound_guided import BoundGuidedClassifier
from lightning_modules.classifier import ImageClassifier
from lightning_modules.zoo import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "AdversarialClassifier", "BoundGuidedClassifier", "ImageClassifier", "build_model"]
