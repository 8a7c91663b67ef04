"""The Fashion-MNIST metrics network and its torch-fidelity feature extractor.

A small VGG-style CNN on 32x32 grey images: three conv stages (32, 64, 128 channels, two 3x3
convs + BatchNorm + ReLU each, 2x2 max-pool), a 256-d fully connected feature layer (ReLU) and
a 10-way linear classifier. The 256-d layer plays Inception's pool3 role (FID, KID,
precision/recall); the logits play its logits role (IS, class accuracy).

Registered with torch-fidelity as ``fmnist-classifier``; it takes torch-fidelity's uint8
(B, 3, H, W) input (grey replicated to RGB is read back from channel 0; H = W = 32).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

EXTRACTOR_NAME = "fmnist-classifier"
FEATURE_LAYER = "features"
LOGITS_LAYER = "logits"


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class FMNISTClassifier(nn.Module):
    """images (B, 1, 32, 32) in [0, 1] -> (features (B, 256), logits (B, 10))."""

    def __init__(self, num_classes: int = 10, feature_dim: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(_stage(1, 32), _stage(32, 64), _stage(64, 128), nn.Flatten())
        self.features = nn.Sequential(nn.Dropout(dropout), nn.Linear(128 * 4 * 4, feature_dim),
                                      nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.body((images - 0.5) / 0.5))
        return features, self.classifier(features)


class FMNISTFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor: uint8 (B, 3, 32, 32) -> the requested of (features, logits), float64."""

    def __init__(self, name: str, features_list: list[str], **kwargs: object) -> None:
        super().__init__(name, features_list)
        from migbench.benchmarks.metrics.loading import load_classifier

        self.net = load_classifier()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURE_LAYER, LOGITS_LAYER)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": LOGITS_LAYER, "fid": FEATURE_LAYER, "kid": FEATURE_LAYER,
                "prc": FEATURE_LAYER}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3 or x.shape[2:] != (32, 32):
            raise ValueError(f"expected uint8 (B, 3, 32, 32), got {x.dtype} {tuple(x.shape)}")
        features, logits = self.net(x[:, :1].float() / 255.0)
        out = {FEATURE_LAYER: features.double(), LOGITS_LAYER: logits.double()}
        return tuple(out[name] for name in self.features_list)
