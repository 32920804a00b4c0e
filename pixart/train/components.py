"""The frozen parts a stage's pipeline carries beside its transformer: VAE, text encoder, tokenizer.

They always live in outputs/vae-<name> and outputs/text-encoder: tiny trains or builds them there;
xl links its local pretrained folders there (no copy). A text-encoder folder holds ``text_encoder/``
and ``tokenizer/`` (the layout of a diffusers pipeline); a VAE folder is an AutoencoderKL folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pixart.config import StageConfig
from pixart.paths import CurriculumPaths


@dataclass(frozen=True)
class Components:
    vae: Path
    text_encoder: Path

    @classmethod
    def for_stage(cls, stage: StageConfig, paths: CurriculumPaths) -> Components:
        return cls(vae=paths.vae(stage.vae), text_encoder=paths.text_encoder)

    def check(self) -> None:
        for path in (self.vae / "config.json", self.text_encoder / "text_encoder", self.text_encoder / "tokenizer"):
            if not path.exists():
                raise FileNotFoundError(f"missing pipeline component {path}")

    def _vae_config(self) -> dict:
        return json.loads((self.vae / "config.json").read_text())

    def vae_downsample(self) -> int:
        return 2 ** (len(self._vae_config()["block_out_channels"]) - 1)

    def scaling_factor(self) -> float:
        return float(self._vae_config()["scaling_factor"])


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy across file systems) a component folder into a stage folder: every stage
    folder is a complete pipeline, and a 10 GB T5 costs no disk per stage."""
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copy2(Path(root) / name, target / name)
