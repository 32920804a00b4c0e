"""A finished stage: a complete diffusers pipeline folder plus ``stage.json``, registered in MLflow.

The folder appears in one rename (nothing half-written is ever the stage's output). The transformer
is written by diffusers' ``save_pretrained``; the frozen components are hard-linked from their
source folders; ``model_index.json`` names our transformer class so that
``PixArtSigmaPipeline.from_pretrained`` rebuilds KV compression.

The trainer checkpoints the last step before it exports, so a failed export (disk full) or a failed
registration (MLflow down) costs no training: the errors name the folder or the store, say what is
kept, and a re-run of the stage resumes at the last step and only exports and registers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import diffusers
from diffusers import SchedulerMixin
from safetensors import SafetensorError

from pixart import atomic, tracking
from pixart.config import StageConfig
from pixart.data.features import FeatureCache, built_cache_key
from pixart.diffusion.schedule import dpm_solver_scheduler, lcm_scheduler
from pixart.models.builders import text_encoder_classes
from pixart.models.transformer import PixArtSigmaTransformer
from pixart.stage_info import LatentRange, StageInfo
from pixart.train.components import link_tree
from pixart.train.job import StageJob
from pixart.train.samples import GRID_FILE, sample_grid


def stage_scheduler(stage: StageConfig) -> SchedulerMixin:
    """The scheduler a stage folder ships: an LCM stage's ``LCMScheduler`` on its solver's grid, else DPM-Solver."""
    if stage.kind == "lcm":
        return lcm_scheduler(stage.lcm.num_ddim_timesteps)
    return dpm_solver_scheduler()


def model_index(text_encoder: Path, scheduler: SchedulerMixin) -> dict[str, Any]:
    """model_index.json of a stage folder whose text encoder is a copy of ``text_encoder``."""
    encoder_class, tokenizer_class = text_encoder_classes(text_encoder)
    return {
        "_class_name": "PixArtSigmaPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", encoder_class],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": [PixArtSigmaTransformer.__module__, PixArtSigmaTransformer.__name__],
        "vae": ["diffusers", "AutoencoderKL"],
    }


class ExportError(RuntimeError):
    """The stage folder could not be written; the message names it and what is kept."""


def write_pipeline(out_dir: Path, transformer: PixArtSigmaTransformer, job: StageJob, info: StageInfo) -> None:
    try:
        with atomic.folder(out_dir) as tmp:
            transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
            scheduler = stage_scheduler(job.stage)
            scheduler.save_pretrained(tmp / "scheduler")
            link_tree(job.components.vae, tmp / "vae")
            link_tree(job.components.text_encoder / "text_encoder", tmp / "text_encoder")
            link_tree(job.components.text_encoder / "tokenizer", tmp / "tokenizer")
            atomic.write_json(tmp / "model_index.json", model_index(tmp / "text_encoder", scheduler))
            info.write(tmp)
    # safetensors reports a full disk as its own error, not as an OSError
    except (OSError, SafetensorError) as exc:
        free = shutil.disk_usage(out_dir.parent).free
        kept = f"the previous {out_dir} is kept" if out_dir.exists() else f"nothing was written to {out_dir}"
        raise ExportError(f"{out_dir}: writing the stage folder failed ({type(exc).__name__}: {exc}; "
                          f"{free / 2**20:.1f} MiB free on its file system); {kept}, and so is the resumable "
                          f"checkpoint {job.state_dir}: re-run the stage to export it (it trains no step)") from exc


def latent_range(job: StageJob) -> LatentRange | None:
    """The per-channel range of the stage's training latents, scaled as the transformer sees them:
    the sampler keeps its predicted x0 inside it (``dpm_solver_scheduler``). None for a stage
    without a feature cache (an imported checkpoint)."""
    if built_cache_key(job.features) is None:
        return None
    low, high = FeatureCache(job.features).latent_range()
    scale = job.components.scaling_factor()
    return LatentRange(low=[v * scale for v in low], high=[v * scale for v in high])


def version_description(job: StageJob, parent_version: str | None) -> str:
    """The registry's one-line account of a stage's checkpoint: what the stage changes and what it
    started from; PixEval appends its scores later (``tracking.log_version_metrics``)."""
    stage = job.stage
    what = stage.description or {"import": "imported official weights", "dmd": "one-step DMD generator",
                                 "lcm": "few-step LCM generator"}.get(
        stage.kind, "training stage")
    source = (f"weak input {stage.init_from} (version {parent_version})" if stage.init_from
              else f"from {stage.pretrained}" if stage.pretrained else "from scratch")
    steps = f", {stage.steps} steps at batch {stage.batch_size}" if stage.steps else ""
    return (f"{job.name}: {what}; {source}; {stage.resolution} px nominal ({job.profile.pixels(stage)} px), "
            f"{stage.caption} captions, {stage.max_tokens} tokens{steps}; profile {job.profile_name}")


def export_stage(job: StageJob, transformer: PixArtSigmaTransformer, run: tracking.StageRun) -> Path:
    """Write the stage folder, register it as a version of the registered model with the stage's
    alias, and record the version in ``stage.json``."""
    from pixart.train import distributed

    if not distributed.is_main():
        distributed.barrier()
        return job.out_dir
    parent = StageInfo.read(job.weak_input) if job.weak_input else None
    info = StageInfo(
        stage=job.name,
        parent=job.stage.init_from,
        # a weak input downloaded from the registry carries no version in its stage.json: its alias does
        parent_version=(parent.model_version or job.stage.init_from) if parent else None,
        profile=job.profile_name,
        config=job.stage,
        step=job.stage.steps,
        data_version=job.data_version,
        mlflow_run_id=run.run_id,
        latent_range=latent_range(job),
    )
    write_pipeline(job.out_dir, transformer, job, info)
    if job.sample_prompts:
        grid = sample_grid(job.out_dir, job.sample_prompts, job.profile.pixels(job.stage),
                           max_tokens=job.stage.max_tokens, precision=job.profile.train.precision)
        grid.save(job.out_dir / GRID_FILE)
        run.log_image(grid, "samples.png", step=job.stage.steps)
    try:
        version = tracking.register_checkpoint(
            run, job.out_dir, stage=job.name, weak_input_version=info.parent_version, data_version=job.data_version,
            description=version_description(job, info.parent_version),
        )
    except tracking.TrackingUnavailable as exc:
        raise tracking.TrackingUnavailable(f"{exc}; {job.out_dir} and the resumable checkpoint {job.state_dir} are "
                                           "kept: re-run the stage to register it (it trains no step)") from None
    info.model_copy(update={"model_version": version}).write(job.out_dir)
    distributed.barrier()
    return job.out_dir
