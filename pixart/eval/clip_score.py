"""CLIP-score: how well images match their prompts under a CLIP model loaded from a local folder.

Convention: score = mean over images of max(cos(image, prompt), 0), i.e. torchmetrics' CLIPScore
(100 · max(cos, 0)) divided by 100 — the 0–1 scale in which the paper reports 0.2797 for PixArt-Σ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pixart.eval.images import Images, as_float_nchw


class ClipScorer:
    """A transformers ``CLIPModel`` + ``CLIPProcessor`` from a local folder; nothing is downloaded."""

    def __init__(self, model_dir: Path, device: str | torch.device = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"CLIP model folder not found or has no config.json: {model_dir}")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)

    @torch.inference_mode()
    def scores(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        """Per-image max(cos(image embedding, prompt embedding), 0), shape (N,)."""
        pixels = as_float_nchw(images)
        if len(pixels) != len(prompts):
            raise ValueError(f"images ({len(pixels)}) and prompts ({len(prompts)}) differ in number")
        as_uint8 = [p for p in (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
        max_len = self.model.config.text_config.max_position_embeddings
        inputs = self.processor(
            text=list(prompts),
            images=as_uint8,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
        ).to(self.device)
        out = self.model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
        return cos.clamp(min=0).float().cpu()


def clip_score(images: Images, prompts: Sequence[str], scorer: ClipScorer, batch_size: int = 32) -> float:
    """Mean CLIP-score of images against their prompts (0–1 scale; see the module docstring)."""
    if len(images) == 0:
        raise ValueError("images: empty batch")
    parts = [
        scorer.scores(images[i : i + batch_size], prompts[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return float(torch.cat(parts).mean())
