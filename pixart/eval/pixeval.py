"""PixEval: one stage's checkpoint against the held-out set — FID, alignment, CLIP-score, speed.

Every stage renders the same held-out prompts (the dense captions of held-out scenes) with the same
seeds, so numbers and sample grids compare stage by stage. FID is taken against one fixed reference
set for every stage, as the paper's MJHQ-30K: the held-out REAL images of the high-quality tier at
the reference resolution, cropped the way training crops them; the backbone then resizes both sets
alike, so a low-resolution stage pays for its blur. Alignment asks the judge whether each image shows
its prompt's scene; the same images scored against shuffled scenes give the chance level. The VAE
ceiling scores the stage's VAE reconstructions of the prompts' own real images the same way: what a
perfect generator behind that decoder would get, which tells a VAE limit from a training one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pixart import atomic
from pixart.data.format import Entry, dataset_version, load_dataset
from pixart.data.scenes import Scene
from pixart.diffusion.stage_sampler import StageSampler
from pixart.eval.backbones import FeatureBackbone
from pixart.eval.clip_score import ClipScorer, clip_score
from pixart.eval.fid import Statistics, extract_features, frechet_distance_to, image_statistics
from pixart.eval.judge import MIN_HELD_OUT_ACCURACY, Judge, train_judge

GRID_IMAGES = 16
# images per sampling batch: on 2 cores 8 is the fastest per image at every size measured (256 px:
# 2.26 s against 2.81 at 32; 128 px: 0.33 against 0.42), and an image does not depend on it
RENDER_BATCH = 8
JUDGE_KEY = "key.json"
PLOT_COLUMNS = ("stage", "fid", "alignment", "vae_ceiling_alignment")
Metrics = dict[str, float | str]


@dataclass(frozen=True)
class HeldOut:
    """The PixEval prompt set: held-out entries, their prompts and scenes."""

    dataset_dir: Path
    entries: list[Entry]

    @property
    def prompts(self) -> list[str]:
        """The dense caption of each entry (the raw one where a dataset has none)."""
        return [e.caption("dense") or e.caption("raw") for e in self.entries]

    @property
    def scenes(self) -> list[Scene | None]:
        return [e.scene for e in self.entries]


def reference_images(dataset_dir: Path, pixels: int) -> torch.Tensor:
    """The FID reference: every high-quality image of a held-out dataset as float NCHW in [0, 1],
    ``pixels`` square, cropped as training crops them."""
    from pixart.data.features import load_pixels

    dataset_dir = Path(dataset_dir)
    entries = [e for e in load_dataset(dataset_dir) if e.quality == "high"]
    if len(entries) < 2:
        raise ValueError(f"{dataset_dir}: {len(entries)} high-quality held-out images; FID needs at least 2")
    return torch.stack([(load_pixels(dataset_dir / e.path, pixels, pixels) + 1) / 2 for e in entries])


def reference_statistics(dataset_dir: Path, pixels: int, backbone: FeatureBackbone) -> Statistics:
    """The FID reference's feature statistics under ``backbone``, once for every stage and ceiling."""
    return image_statistics(reference_images(dataset_dir, pixels), backbone)


def load_heldout(dataset_dir: Path, n_prompts: int) -> HeldOut:
    """The first ``n_prompts`` entries of a held-out dataset (all of them when it has fewer)."""
    dataset_dir = Path(dataset_dir)
    entries = load_dataset(dataset_dir)[:n_prompts]
    if len(entries) < 2:
        raise ValueError(f"{dataset_dir}: {len(entries)} held-out entries; FID needs at least 2")
    return HeldOut(dataset_dir, entries)


def _as_uint8(images: Sequence) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def _generate(
    pipeline, sampler: StageSampler, prompts: Sequence[str], *, batch_size: int, seed: int, steps: int, cfg: float,
    **size,
) -> tuple[np.ndarray, float]:
    """All images (uint8 NHWC) and the seconds per image, drawn by the stage's own sampler. Prompt
    ``k`` is drawn from seed ``seed + k`` whatever the batch size (``image_generators``)."""
    from tqdm.auto import tqdm

    images = []
    start = time.perf_counter()
    # a 2K stage renders for minutes on a CPU: the bar says how far it is
    batches = range(0, len(prompts), batch_size)
    for first in tqdm(batches, desc=f"pixeval: rendering {len(prompts)} images", unit="batch", leave=False):
        images += sampler.sample(pipeline, prompts[first : first + batch_size], steps=steps, cfg=cfg,
                                 seed=seed + first, **size)
    return _as_uint8(images), (time.perf_counter() - start) / len(prompts)


def _alignment(judge: Judge, images: np.ndarray, scenes: Sequence[Scene | None]) -> tuple[Metrics, np.ndarray | None]:
    """The alignment metrics and the per-image alignment (None when the judge refuses)."""
    accuracy = judge.report.held_out_accuracy
    if accuracy < MIN_HELD_OUT_ACCURACY:
        return {"alignment": f"judge refused: {accuracy:.3f}", "judge_accuracy": accuracy}, None
    if any(s is None for s in scenes):
        raise ValueError("scenes: alignment needs a scene for every held-out prompt (generated data)")
    # rolling by one pairs every image with another prompt's scene: a derangement, hence chance level
    shuffled = list(scenes[1:]) + list(scenes[:1])
    per_image = judge.alignment(images, scenes).numpy()
    metrics: Metrics = {
        "alignment": float(per_image.mean()),
        "alignment_shuffled": float(judge.alignment(images, shuffled).mean()),
        "judge_accuracy": accuracy,
    }
    return metrics, per_image


def save_grid(images: np.ndarray, path: Path) -> None:
    """The first GRID_IMAGES images tiled into one PNG at ``path``, written atomically."""
    from PIL import Image

    from pixart.train.samples import tile

    grid = tile([Image.fromarray(im) for im in images[:GRID_IMAGES]])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        grid.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.no_grad()
def vae_ceiling(
    vae_dir: Path,
    heldout: HeldOut,
    pixels: int,
    reference: Statistics,
    backbone: FeatureBackbone,
    judge: Judge | None = None,
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> Metrics:
    """``vae_ceiling_fid`` and, with a trusted judge, ``vae_ceiling_alignment``: the PixEval numbers of
    the VAE's reconstructions (posterior mode) of the held-out prompts' real images at ``pixels``,
    cropped as training crops them. A generated image leaves through the same decoder.

    The alignment reads the square images' reconstructions only: a square crop of a 2:1 scene cuts
    away the cells its prompt names, and with half the scenes non-square that halved the ceiling
    (tiny, objects 0.6 / 1.0 of a cell, 64 px: 0.56 over every prompt, 0.73 over square scenes)."""
    from pixart.data.features import load_pixels
    from pixart.models.builders import build_vae

    vae = build_vae(vae_dir).eval().to(device)
    images = []
    for first in range(0, len(heldout.entries), batch_size):
        batch = heldout.entries[first : first + batch_size]
        x = torch.stack([load_pixels(heldout.dataset_dir / e.path, pixels, pixels) for e in batch])
        y = vae.decode(vae.encode(x.to(device, vae.dtype)).latent_dist.mode()).sample.float().clamp(-1, 1)
        images.append(((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    images = np.concatenate(images)
    metrics: Metrics = {"vae_ceiling_fid": frechet_distance_to(extract_features(images, backbone), reference)}
    square = [i for i, e in enumerate(heldout.entries) if e.height == e.width]
    if judge is not None and len(square) >= 2:
        alignment = _alignment(judge, images[square], [heldout.scenes[i] for i in square])[0]["alignment"]
        if isinstance(alignment, float):
            metrics["vae_ceiling_alignment"] = alignment
    return metrics


@dataclass(frozen=True)
class StageEvaluation:
    """One stage's PixEval: its metrics, and per prompt (row i from prompt i) the images' backbone
    features (N, D), for ``trend.fid_gain``, and their alignment (N,), for ``trend.alignment_gain``
    (None without a trusted judge)."""

    metrics: Metrics
    features: np.ndarray
    alignment: np.ndarray | None


def save_evaluations(folder: Path, evaluations: Mapping[str, StageEvaluation]) -> None:
    """Each evaluation as ``<folder>/<stage>.npz`` (metrics, per-prompt features and alignment), in one
    atomic folder: what the ablations read of a stage PixEval has already rendered."""
    with atomic.folder(folder) as tmp:
        for name, evaluation in evaluations.items():
            arrays = {"features": evaluation.features}
            if evaluation.alignment is not None:
                arrays["alignment"] = evaluation.alignment
            np.savez(tmp / f"{name}.npz", metrics=np.array(json.dumps(evaluation.metrics)), **arrays)


def load_evaluation(folder: Path, name: str) -> StageEvaluation:
    """The evaluation ``save_evaluations`` wrote for stage ``name``; a missing one says which stage writes it."""
    path = Path(folder) / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no PixEval of stage '{name}' (the pixeval stage writes it)")
    with np.load(path) as saved:
        alignment = saved["alignment"] if "alignment" in saved.files else None
        return StageEvaluation(json.loads(str(saved["metrics"])), saved["features"], alignment)


def evaluate_stage(
    stage_dir: Path,
    prompts: Sequence[str],
    scenes: Sequence[Scene | None],
    reference: Statistics,
    *,
    steps: int | None,
    cfg: float,
    seed: int,
    height: int,
    width: int,
    max_tokens: int,
    backbone: FeatureBackbone,
    judge: Judge | None = None,
    clip: ClipScorer | None = None,
    batch_size: int = RENDER_BATCH,
    grid_path: Path | None = None,
    device: str = "cpu",
) -> StageEvaluation:
    """PixEval of one checkpoint folder: one image per prompt (fixed seeds), then ``fid`` against
    the ``reference`` statistics (``reference_statistics``), ``alignment`` / ``alignment_shuffled``
    (chance) when a judge is given — or "judge refused: <accuracy>" when it is below
    MIN_HELD_OUT_ACCURACY —, ``clip_score`` when a scorer is given, and ``seconds_per_image``. Each
    checkpoint samples with its own sampler (``StageSampler``): ``steps`` None is its default (DPM-Solver
    ``DEFAULT_STEPS``, LCM 4), a DMD generator runs one step whatever ``steps`` and ``cfg`` say. Saves a
    sample grid to ``grid_path`` when given."""
    from pixart.diffusion.sampling import DEFAULT_STEPS
    from pixart.diffusion.schedule import DataRangeDPMSolver
    from pixart.models.pipeline import load_pipeline

    if len(prompts) != len(scenes):
        raise ValueError(f"prompts ({len(prompts)}) and scenes ({len(scenes)}) differ in number")
    pipeline = load_pipeline(stage_dir).to(device)
    pipeline.set_progress_bar_config(disable=True)
    sampler = StageSampler.of(stage_dir)
    steps = sampler.steps(steps, DEFAULT_STEPS)
    images, seconds = _generate(
        pipeline, sampler, list(prompts), batch_size=batch_size, seed=seed, steps=steps, cfg=cfg,
        height=height, width=width, max_tokens=max_tokens,
    )  # fmt: skip
    features = extract_features(images, backbone).numpy()
    metrics: Metrics = {
        "fid": frechet_distance_to(features, reference),
        "seconds_per_image": seconds,
        "n_images": len(images),
        "steps": steps,
        "sampler": sampler.describe(steps, cfg)
                   + (", x0 in the training latents' range" if isinstance(pipeline.scheduler, DataRangeDPMSolver) else ""),
    }
    alignment = None
    if judge is not None:
        scored, alignment = _alignment(judge, images, scenes)
        metrics |= scored
    if clip is not None:
        metrics["clip_score"] = clip_score(images, prompts, clip)
    if grid_path is not None:
        save_grid(images, grid_path)
    return StageEvaluation(metrics, features, alignment)


def judge_key(train_dir: Path, steps: int, seed: int) -> str:
    """What a trained judge depends on: the training data's content, its steps and seed."""
    identity = {"data": dataset_version(train_dir), "steps": steps, "seed": seed}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def ensure_judge(train_dir: Path, out: Path, *, steps: int, seed: int = 0) -> Judge:
    """The judge in ``out`` when it was trained with the same key, else one trained now (and saved)."""
    out = Path(out)
    key = judge_key(train_dir, steps, seed)
    key_file = out / JUDGE_KEY
    if key_file.is_file() and json.loads(key_file.read_text()).get("key") == key:
        return Judge.load(out)
    report = train_judge(train_dir, out, steps=steps, seed=seed)
    # written after the judge: a crash in between leaves no key, so the next run retrains
    atomic.write_json(key_file, {"key": key, "report": asdict(report)})
    return Judge.load(out)


def numeric(metrics: Mapping[str, float | str]) -> dict[str, float]:
    """The numeric metrics (what the registry stores); a judge refusal is text and stays out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def write_reports(metrics_dir: Path, results: Mapping[str, Metrics]) -> None:
    """``pixeval/<stage>.json`` per stage, ``pixeval.json`` (all stages, for ``dvc metrics``) and
    ``pixeval_plot.csv`` (PLOT_COLUMNS in curriculum order, for ``dvc plots``)."""
    metrics_dir = Path(metrics_dir)
    for stage, metrics in results.items():
        atomic.write_json(metrics_dir / "pixeval" / f"{stage}.json", metrics)
    atomic.write_json(metrics_dir / "pixeval.json", dict(results))
    rows = [",".join(PLOT_COLUMNS)]
    for stage, metrics in results.items():
        # a refused judge leaves its cells empty: the plot shows a gap, not a made-up number
        values = [metrics.get(column) for column in PLOT_COLUMNS[1:]]
        rows.append(",".join([stage, *(f"{v:.6g}" if isinstance(v, float) else "" for v in values)]))
    atomic.write_text(metrics_dir / "pixeval_plot.csv", "\n".join(rows) + "\n")
