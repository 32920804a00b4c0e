"""recaption: a dense caption of every training and held-out image, by the profile's captioner (tiny:
a scene reader trained here on the training split; xl: a local VLM), into
outputs/recaption/{train,heldout}.json (content hash -> caption), beside data_info.json's captions,
which it never changes. Then the audit of the raw, recaption and truth captions of the held-out split
(hallucination and recall where the scenes are known, the paper's Table 1 statistics, CLIP-score
where a CLIP model is configured) into metrics/recaption.json and the stage's MLflow run, with the
caption panels (metrics/recaption/panels.md).

The captions accumulate in a store outside the DVC output (the cache folder's
checkpoints/recaption/<captioner key>), so a killed run resumes where it stopped and an unchanged
image is never captioned twice. ``pixart launch --num-gpus N stages.recaption`` shards the images
over N processes, one GPU each (vlm).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pixart import atomic, tracking
from pixart.captions.audit import audit
from pixart.captions.panels import panels_markdown
from pixart.captions.recaption import captions_of, dense_captions, image_hashes, recaption_dataset
from pixart.captions.scene_reader import SceneCaptioner
from pixart.captions.store import CaptionStore
from pixart.captions.vlm import VLMCaptioner
from pixart.data.format import dataset_version, load_dataset
from pixart.hashing import folder_hash
from pixart.models.pipeline import run_device
from pixart.train import distributed
from pixart.train.checkpoint import run_key
from stages.common import StageContext, parse
from stages.features import join_launcher

STAGE = "recaption"
PANELS = "panels.md"
CLIP_PX = 224


def captioner_of(ctx: StageContext) -> tuple[object, dict]:
    """The profile's captioner and its identity (what its captions depend on)."""
    cfg, paths = ctx.profile.recaption, ctx.paths
    if cfg.captioner == "scene":
        train = paths.train_dataset(ctx.profile)
        identity = {"captioner": "scene", "data": dataset_version(train), "steps": cfg.steps, "seed": cfg.seed}
        reader = paths.state(STAGE) / f"reader-{run_key(identity)}"
        if (reader / "judge.json").is_file():
            from pixart.eval.judge import Judge

            return SceneCaptioner(Judge.load(reader)), identity
        return SceneCaptioner.train(train, reader, steps=cfg.steps, seed=cfg.seed), identity
    model = ctx.settings.path(cfg.model_path)
    precision = ctx.profile.train.precision
    identity = {"captioner": "vlm", "model": folder_hash(model), "instruction": cfg.instruction,
                "max_new_tokens": cfg.max_new_tokens, "precision": precision}
    return VLMCaptioner(model, instruction=cfg.instruction, max_new_tokens=cfg.max_new_tokens, precision=precision,
                        device=run_device()), identity


def _clip_scores(ctx: StageContext, dataset_dir, sources: dict[str, list[str]]) -> dict[str, float] | None:
    clip_path = ctx.profile.pixeval.clip_path
    if clip_path is None:
        return None
    from pixart.eval.clip_score import ClipScorer, clip_score

    scorer = ClipScorer(ctx.settings.path(clip_path), run_device())
    images = []
    for e in load_dataset(dataset_dir):
        with Image.open(dataset_dir / e.path) as im:
            images.append(np.asarray(im.convert("RGB").resize((CLIP_PX, CLIP_PX), Image.BICUBIC)))
    batch = np.stack(images)
    return {source: clip_score(batch, captions, scorer) for source, captions in sources.items()}


def main() -> None:
    ctx = parse(__doc__)
    cfg, paths, profile = ctx.profile.recaption, ctx.paths, ctx.profile
    if cfg is None:
        raise SystemExit(f"recaption: profile '{ctx.profile_name}' has no 'recaption' section")
    rank = join_launcher()
    world = distributed.world_size()
    if cfg.captioner == "scene" and world > 1:
        raise SystemExit("recaption: the scene reader runs in one process (captioner 'scene', num_gpus 1)")
    captioner, identity = captioner_of(ctx)
    store = CaptionStore(paths.state(STAGE) / run_key(identity), rank)
    splits = {"train": paths.train_dataset(profile), "heldout": paths.heldout_data}
    hashes = {split: image_hashes(folder) for split, folder in splits.items()}  # read once, not per step
    reports = {split: recaption_dataset(folder, captioner, store, batch_size=cfg.batch_size, rank=rank, world=world,
                                        desc=f"recaption {split}", hashes=hashes[split])
               for split, folder in splits.items()}
    distributed.barrier()
    if rank != 0:
        return
    stored = store.read()
    captions = {split: captions_of(folder, stored, hashes[split]) for split, folder in splits.items()}
    entries = load_dataset(paths.heldout_data)
    recaptions = dense_captions(paths.heldout_data, captions["heldout"], hashes["heldout"])  # per entry: an image may repeat
    sources = {"raw": [e.prompt for e in entries], "recaption": [recaptions[e.path] for e in entries],
               "truth": [e.sharegpt4v for e in entries]}
    scenes = [e.scene for e in entries]
    spec = profile.data.generator if profile.data.source == "generated" else None
    table = audit(sources, scenes=scenes, truth=sources["truth"], spec=spec,
                  clip_scores=_clip_scores(ctx, paths.heldout_data, sources))
    shown = entries[: cfg.panels]
    panels = panels_markdown([paths.heldout_data / e.path for e in shown], {k: v[: cfg.panels] for k, v in sources.items()},
                             scenes[: cfg.panels], spec, f"Captions of held-out images ({ctx.profile_name})")
    with atomic.folder(paths.stage(STAGE)) as tmp:
        for split, by_hash in captions.items():
            atomic.write_json(tmp / f"{split}.json", {"captioner": identity, "captions": by_hash})
    atomic.write_text(paths.metrics / STAGE / PANELS, panels)
    speed = {f"{split}_images_per_second": r.images_per_second for split, r in reports.items() if r.captioned}
    metrics = {"sources": table, "captioned": {split: r.captioned for split, r in reports.items()}, **speed}
    if cfg.captioner == "scene":
        metrics["reader_held_out_accuracy"] = captioner.report.held_out_accuracy
    atomic.write_json(paths.metrics / "recaption.json", metrics)
    tracking.configure(ctx.settings)
    with tracking.stage_run(STAGE, {"profile": ctx.profile_name, "recaption": cfg.model_dump(mode="json")},
                            data_version=dataset_version(splits["train"])) as run:
        flat = {f"{source}.{k}": float(v) for source, row in table.items() for k, v in row.items()
                if isinstance(v, (int, float))}
        run.log_metrics({**flat, **speed}, step=0)
        run.log_dict(metrics, "recaption.json")
        run.log_file(paths.metrics / STAGE / PANELS)
    for source, row in table.items():
        print(f"recaption audit {source}: {row}")
    print(f"recaption: {sum(r.captioned for r in reports.values())} captioned, "
          f"{sum(r.already_done for r in reports.values())} already in the store -> {paths.stage(STAGE)}")


if __name__ == "__main__":
    main()
