"""A randomly initialised ``inception-v3-compat`` weights file, to try the ImageNet evaluation
path (and measure its speed) where torch-fidelity's real Inception weights cannot be had: the
network torch-fidelity builds, with no weights loaded, its convolutions He-initialised from a
seed so features are O(1), saved as the state dict ``feature_extractor_weights_path`` loads.
Features and metrics from it mean nothing; its sha256 (the extractor identity on every row)
tells its rows apart from real ones.

``python -m migbench.benchmarks.metrics.random_inception PATH`` writes one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch
import torch_fidelity.feature_extractor_inceptionv3 as fe


class _Unloaded(fe.FeatureExtractorInceptionV3):
    def load_state_dict(self, state_dict: object, strict: bool = True, assign: bool = False) -> None:
        return None  # the constructor loads weights; here there are none to load


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """Write the random weights file to ``path`` (same seed, same file); returns ``path``."""
    with torch.random.fork_rng(), mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        torch.manual_seed(seed)
        module = _Unloaded("inception-v3-compat", ["2048", "logits_unbiased"])
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m migbench.benchmarks.metrics.random_inception PATH")
    print(write_random_inception(Path(sys.argv[1])))
