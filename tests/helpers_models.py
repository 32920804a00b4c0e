"""Tiny-model builders shared by test files (plain functions; the lead owns conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CAPTIONS = [
    f"a {size} {colour} {shape} on the {place}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "triangle")
    for place in ("left", "right", "top", "bottom")
]

# debug pipelines render 32 px images: tiny VAE latents of 8, a 4 x 4 token grid at patch 2
DEBUG_IMAGE_SIDE = 32
DEBUG_LATENT_SIDE = 8


def debug_parts(tokenizer_dir: Path, *, kv_compress: bool = True, seed: int = 0) -> dict[str, Any]:
    """The five components of a debug-spec PixArtSigmaPipeline, randomly initialised and seeded."""
    from pixart.diffusion.schedule import dpm_solver_scheduler
    from pixart.models.builders import TINY_VAE_CONFIGS, build_text_encoder, build_vae, train_tokenizer
    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation

    spec = get_spec("debug")
    tokenizer = train_tokenizer(CAPTIONS, tokenizer_dir, vocab_size=48)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = build_transformer(
            spec,
            sample_size=DEBUG_LATENT_SIDE,
            interpolation_scale=pe_interpolation(256),
            kv_compress_layers=spec.kv_compress_layers if kv_compress else None,
        )
    return {
        "transformer": transformer.eval(),
        "vae": build_vae(TINY_VAE_CONFIGS["new"], seed=seed).eval(),
        "text_encoder": build_text_encoder(spec, vocab_size=len(tokenizer), seed=seed),
        "tokenizer": tokenizer,
        "scheduler": dpm_solver_scheduler(),
    }


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter, so that a load that drops weights cannot pass for exact."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def write_stage_info(folder: Path, stage: str, profile: str = "smoke", model_version: str | None = None) -> None:
    """The ``stage.json`` a finished stage ``stage`` of ``profile`` would leave in ``folder``."""
    from pixart.config import load_profile
    from pixart.stage_info import StageInfo

    config = load_profile(profile)[1].stages[stage]
    StageInfo(stage=stage, parent=config.init_from, parent_version=None, profile=profile, config=config,
              step=config.steps, data_version="test", mlflow_run_id=None, latent_range=None,
              model_version=model_version).write(folder)


def teacher_world(root: Path) -> tuple[Path, Any, Path]:
    """A registered teacher pipeline (``aes-512``), its frozen components and a square feature cache of 8
    captions, as the curriculum's stages would leave them for a distillation stage."""
    from safetensors.torch import save_file

    from pixart import atomic, tracking
    from pixart.data.feature_identity import CACHE_FORMAT
    from pixart.data.null_caption import save_null_caption
    from pixart.models.builders import encode_captions
    from pixart.models.pipeline import save_pipeline
    from pixart.train.components import Components

    parts = debug_parts(root / "tokenizer")
    perturb(parts["transformer"])
    teacher = save_pipeline(root / "outputs/aes-512", **parts)
    with tracking.stage_run("aes-512", {"profile": "smoke"}) as run:
        version = tracking.register_checkpoint(run, teacher, stage="aes-512", weak_input_version=None,
                                               data_version="test")
    write_stage_info(teacher, "aes-512", model_version=version)
    components = Components(vae=teacher / "vae", text_encoder=teacher)
    features = root / "features/aes-512"
    features.mkdir(parents=True)
    text, mask = encode_captions(parts["text_encoder"], parts["tokenizer"], CAPTIONS[:8], 16)
    g = torch.Generator().manual_seed(0)
    latent = (8, 4, DEBUG_LATENT_SIDE, DEBUG_LATENT_SIDE)
    mean = torch.randn(latent, generator=g)
    save_file({"latent_mean": mean, "latent_std": torch.full(latent, 0.1),
               "text": text.float().contiguous(), "mask": mask.to(torch.int8).contiguous()}, features / "shard-00000.safetensors")
    atomic.write_json(features / "index.json", {
        "key": "k", "components": {"format": CACHE_FORMAT}, "shards": ["shard-00000.safetensors"],
        "items": [{"index": i, "shard": 0, "row": i, "ratio": 1.0, "height": DEBUG_IMAGE_SIDE,
                   "width": DEBUG_IMAGE_SIDE} for i in range(8)],
        "latent_range": {"low": mean.amin(dim=(0, 2, 3)).tolist(), "high": mean.amax(dim=(0, 2, 3)).tolist()},
    })
    null_text, null_mask = encode_captions(parts["text_encoder"], parts["tokenizer"], [""], 16)
    save_null_caption(features, null_text, null_mask)
    return teacher, components, features
