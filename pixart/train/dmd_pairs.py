"""Teacher noise -> image pairs for DMD's regression loss, computed once and cached.

The teacher (the DMD stage's weak input) samples each pair with DPM-Solver (paper: 20 steps, CFG 4.5)
from stored noise, for the DMD stage's training captions, whose T5 features come from the feature cache
(no text encoder in memory). The file keeps the noise, the final latent (scaled, the model's x0 space)
and the cache position of the caption, not the features: 300 x 4096 floats per caption would dwarf the
latents at xl scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pixart import atomic
from pixart.data.features import FeatureCache
from pixart.data.null_caption import load_null_caption
from pixart.models.builders import with_null_caption
from pixart.train import distributed

PAIRS_FILE = "pairs.safetensors"
# One metadata key holding JSON: safetensors writes a metadata map in a random order, and the file must
# be the same bytes however many processes made it.
METADATA = "teacher_pairs"


def latent_shape(cache: FeatureCache) -> torch.Size:
    """The one latent shape of a square feature cache; DMD trains at a single size."""
    sizes = {(item["height"], item["width"]) for item in cache.items}
    if len(sizes) != 1:
        raise ValueError(f"{cache.dir}: DMD needs one image size (multi_aspect: false), found {sorted(sizes)}")
    return cache[0]["latent_mean"].shape


def pair_noise(seed: int, pairs: range, shape: torch.Size) -> torch.Tensor:
    """The initial noise of pairs ``pairs``, each drawn from its own key (seed, i): the same in
    whichever process and batch a pair is sampled. The CPU generator keeps 32 bits of a seed; these
    keys differ there for every pair of one file."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                        for i in pairs])


@torch.no_grad()
def make_teacher_pairs(teacher_dir: Path, features: Path, out_dir: Path, *, pairs: int, steps: int, cfg: float,
                       seed: int = 0, batch_size: int = 16, precision: str = "fp32") -> Path:
    """Write ``out_dir/pairs.safetensors``: ``pairs`` teacher samples (DPM-Solver, ``steps`` steps, CFG
    ``cfg``, negative = the null caption) for the first cache captions, cycling when there are fewer;
    returns the file. The teacher runs on ``run_device()`` in ``precision`` (a profile's
    ``train.precision``).

    Under a ``torch.distributed`` process group rank r samples the batches b with b % world == r and
    rank 0 gathers them and writes the file: batches and per-pair noise do not depend on the world
    size, so neither do the file's bytes."""
    from pixart.diffusion.schedule import use_dpm_solver
    from pixart.models.pipeline import load_pipeline

    cache = FeatureCache(features)
    shape = latent_shape(cache)
    null = load_null_caption(features)
    pipeline = load_pipeline(teacher_dir, precision=precision, text_encoder=False)
    use_dpm_solver(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    rank, world = _rank_and_world()
    batches = [range(start, min(start + batch_size, pairs)) for start in range(0, pairs, batch_size)]
    mine = {b: _teacher_latents(pipeline, cache, batches[b], _noise(pipeline, seed, batches[b], shape), null,
                                steps=steps, cfg=cfg)
            for b in tqdm(range(rank, len(batches), world), desc="teacher pairs", disable=rank != 0)}
    latents = _gather(mine, world)
    if rank == 0:
        info = {"teacher": str(teacher_dir), "steps": steps, "cfg": cfg, "seed": seed, "precision": precision,
                "cache_key": cache.key}
        with atomic.folder(Path(out_dir)) as tmp:
            save_file({"noise": _noise(pipeline, seed, range(pairs), shape).contiguous(),
                       "latent": torch.cat([latents[b] for b in range(len(batches))]).contiguous(),
                       "index": torch.arange(pairs) % len(cache)},
                      tmp / PAIRS_FILE, metadata={METADATA: json.dumps(info, sort_keys=True)})
    distributed.barrier()
    return Path(out_dir) / PAIRS_FILE


def _noise(pipeline: Any, seed: int, pairs: range, shape: torch.Size) -> torch.Tensor:
    """The pairs' noise as the teacher sees it, in fp32: a bf16 teacher starts from the rounded noise,
    and the regression must pair its output with that."""
    return pair_noise(seed, pairs, shape).to(pipeline.transformer.dtype).float()


def _teacher_latents(pipeline: Any, cache: FeatureCache, pairs: range, noise: torch.Tensor,
                     null: tuple[torch.Tensor, torch.Tensor], *, steps: int, cfg: float) -> torch.Tensor:
    """The teacher's final latents (fp32, CPU) from ``noise`` for the captions of ``pairs`` (the
    cache's rows, cycled)."""
    batch = cache.collate([cache[i % len(cache)] for i in pairs])
    # the pipeline moves given caption features to its device, not their masks
    text, mask, null_text, null_mask = (t.to(pipeline.device) for t in
                                        with_null_caption(batch["text"], batch["mask"], *null))
    return pipeline(
        prompt=None, negative_prompt=None, prompt_embeds=text, prompt_attention_mask=mask,
        negative_prompt_embeds=null_text, negative_prompt_attention_mask=null_mask,
        latents=noise.to(pipeline.device, pipeline.transformer.dtype), num_inference_steps=steps,
        guidance_scale=cfg, height=noise.shape[-2] * pipeline.vae_scale_factor,
        width=noise.shape[-1] * pipeline.vae_scale_factor, use_resolution_binning=False, output_type="latent",
    ).images.float().cpu()


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(mine: dict[int, torch.Tensor], world: int) -> dict[int, torch.Tensor]:
    """Every rank's batches on rank 0; an empty dict on the others."""
    if world == 1:
        return mine
    parts: list[dict[int, torch.Tensor]] | None = [{} for _ in range(world)] if distributed.is_main() else None
    torch.distributed.gather_object(mine, parts, dst=0)
    return {b: latent for part in parts or [] for b, latent in part.items()}


class TeacherPairs:
    """A pairs file, memory-mapped: ``batch(rows)`` gives noise, latent and the captions' cache index."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: missing; the teacher-pairs stage writes it")
        self._file = safe_open(str(self.path), framework="pt")
        self.metadata = json.loads(self._file.metadata()[METADATA])

    def __len__(self) -> int:
        return self._file.get_slice("index").get_shape()[0]

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: torch.cat([self._file.get_slice(key)[int(r):int(r) + 1] for r in rows])
                for key in ("noise", "latent", "index")}
