"""Teacher noise -> image pairs for DMD's regression loss, computed once and cached.

The teacher (the DMD stage's weak input) samples each pair with DPM-Solver (paper: 20 steps, CFG 4.5)
from stored noise, for the DMD stage's training captions, whose T5 features come from the feature cache
(no text encoder in memory). The file keeps the noise, the final latent (scaled, the model's x0 space)
and the cache position of the caption, not the features: 300 x 4096 floats per caption would dwarf the
latents at xl scale.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pixart import atomic
from pixart.data.features import FeatureCache
from pixart.data.null_caption import load_null_caption
from pixart.models.builders import with_null_caption

PAIRS_FILE = "pairs.safetensors"


def latent_shape(cache: FeatureCache) -> torch.Size:
    """The one latent shape of a square feature cache; DMD trains at a single size."""
    sizes = {(item["height"], item["width"]) for item in cache.items}
    if len(sizes) != 1:
        raise ValueError(f"{cache.dir}: DMD needs one image size (multi_aspect: false), found {sorted(sizes)}")
    return cache[0]["latent_mean"].shape


@torch.no_grad()
def make_teacher_pairs(teacher_dir: Path, features: Path, out_dir: Path, *, pairs: int, steps: int, cfg: float,
                       seed: int = 0, batch_size: int = 16) -> Path:
    """Write ``out_dir/pairs.safetensors``: ``pairs`` teacher samples (DPM-Solver, ``steps`` steps, CFG
    ``cfg``, negative = the null caption) for the first cache captions, cycling when there are fewer;
    returns the file."""
    from pixart.diffusion.schedule import use_dpm_solver
    from pixart.models.pipeline import load_pipeline

    cache = FeatureCache(features)
    shape = latent_shape(cache)
    null_text, null_mask = load_null_caption(features)
    pipeline = load_pipeline(teacher_dir)
    use_dpm_solver(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    index = torch.arange(pairs) % len(cache)
    noise = torch.randn((pairs, *shape), generator=torch.Generator().manual_seed(seed))
    latents = []
    for start in tqdm(range(0, pairs, batch_size), desc="teacher pairs"):
        rows = index[start:start + batch_size]
        batch = cache.collate([cache[int(i)] for i in rows])
        text, mask, null, null_m = with_null_caption(batch["text"], batch["mask"], null_text, null_mask)
        latents.append(pipeline(
            prompt=None, negative_prompt=None, prompt_embeds=text, prompt_attention_mask=mask,
            negative_prompt_embeds=null, negative_prompt_attention_mask=null_m,
            latents=noise[start:start + batch_size], num_inference_steps=steps, guidance_scale=cfg,
            height=shape[-2] * pipeline.vae_scale_factor, width=shape[-1] * pipeline.vae_scale_factor,
            use_resolution_binning=False, output_type="latent",
        ).images.float())
    with atomic.folder(Path(out_dir)) as tmp:
        save_file({"noise": noise.contiguous(), "latent": torch.cat(latents).contiguous(), "index": index},
                  tmp / PAIRS_FILE,
                  metadata={"teacher": str(teacher_dir), "steps": str(steps), "cfg": str(cfg), "seed": str(seed),
                            "cache_key": cache.key})
    return Path(out_dir) / PAIRS_FILE


class TeacherPairs:
    """A pairs file, memory-mapped: ``batch(rows)`` gives noise, latent and the captions' cache index."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: missing; the teacher-pairs stage writes it")
        self._file = safe_open(str(self.path), framework="pt")
        self.metadata = self._file.metadata()

    def __len__(self) -> int:
        return self._file.get_slice("index").get_shape()[0]

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: torch.cat([self._file.get_slice(key)[int(r):int(r) + 1] for r in rows])
                for key in ("noise", "latent", "index")}
