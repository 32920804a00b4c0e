"""Where a stage's transformer comes from: its weak input, an official checkpoint, or scratch.

The weak input is loaded as it was exported (KV compression included: layers already compressed keep
their adapted weights); the stage then moves it to its own resolution and PE interpolation, and turns
KV compression on in its layers (averaging init, the adaption path).
"""

from __future__ import annotations

from pixart.models.specs import get_spec
from pixart.models.transformer import (
    PixArtSigmaTransformer,
    build_transformer,
    enable_kv_compression,
    pe_interpolation,
    set_resolution,
)
from pixart.train.components import Components
from pixart.train.job import StageJob


def latent_side(job: StageJob, components: Components) -> int:
    pixels = job.profile.pixels(job.stage)
    factor = components.vae_downsample()
    if pixels % factor:
        raise ValueError(f"stages.{job.name}.resolution: {pixels} px is not a multiple of the VAE's x{factor}")
    return pixels // factor


def load_transformer(job: StageJob, components: Components) -> PixArtSigmaTransformer:
    stage = job.stage
    side = latent_side(job, components)
    scale = stage.pe_interpolation or pe_interpolation(stage.resolution)
    spec = get_spec(job.profile.model)
    if job.weak_input is not None:
        model = PixArtSigmaTransformer.from_pretrained(job.weak_input / "transformer")
    elif stage.pretrained is not None:
        from pixart.models.convert import official_transformer
        from pixart.settings import get_settings

        pretrained = get_settings().path(stage.pretrained)  # relative to the project, wherever the process runs
        model, _ = official_transformer(pretrained, spec, sample_size=side, interpolation_scale=scale)
    else:
        model = build_transformer(spec, sample_size=side, interpolation_scale=scale)
    set_resolution(model, side, scale)
    if stage.kv_compress_layers:
        enable_kv_compression(model, stage.kv_compress_layers)
    return model
