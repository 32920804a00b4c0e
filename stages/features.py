"""features-<set>: the VAE latents and T5 features of one feature set.

A feature set is one distinct (VAE, resolution, caption kind, max tokens, buckets, quality, images),
named after the first stage that needs it (``pixart.paths.feature_set``); each is its own DVC stage,
so that a changed set re-encodes alone and DVC's run cache restores the others in a fresh clone. The
cache is content-keyed: the key names the component folders by their memoised content hashes
(``pixart.hashing``), not by rereading their weights. Its resumable work folder lives in the cache
folder, outside the DVC output: a killed build resumes shard by shard.

``torchrun --nproc_per_node N -m stages.features SET`` splits the set's shards over N processes, one
GPU each; the result is the same as one process's.
"""

import json
import os

import torch

from pixart.captions.recaption import dense_captions
from pixart.data.buckets import aspect_ratio_buckets
from pixart.data.features import build_feature_cache
from pixart.data.null_caption import save_null_caption
from pixart.hashing import folder_hash
from pixart.models.builders import (
    build_text_encoder,
    build_vae,
    load_tokenizer,
    null_caption_embedding,
    precision_dtype,
)
from pixart.models.pipeline import run_device
from pixart.paths import carries_raw, feature_sets
from pixart.train import distributed
from pixart.train.components import Components
from stages.common import StageContext, parse


def join_launcher() -> int:
    """This process's rank: under a launcher it joins the process group (gloo on CPU, NCCL on its
    GPU); alone it is a world of one, without a group."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    if run_device().type == "cuda":  # before NCCL starts: its barriers run on the current device
        torch.cuda.set_device(run_device())
    return distributed.init()[0]


def recaptions(ctx: StageContext) -> dict[str, str]:
    """The training split's dense captions as the recaption stage wrote them: entry path -> caption."""
    written = ctx.paths.stage("recaption") / "train.json"
    if not written.is_file():
        raise SystemExit(f"features: {written} not found; the recaption stage runs first (dvc repro)")
    return dense_captions(ctx.paths.train_dataset(ctx.profile), json.loads(written.read_text())["captions"])


def main() -> None:
    ctx = parse(__doc__, named=True)
    profile, paths, name = ctx.profile, ctx.paths, ctx.name
    if name not in feature_sets(profile):
        raise SystemExit(f"features: '{name}' is not a feature set of profile '{ctx.profile_name}' "
                         f"(have {list(feature_sets(profile))})")
    rank, device = join_launcher(), run_device()
    stage = profile.trained()[name]
    components = Components.for_stage(stage, paths)
    encoder_dir, tokenizer_dir = paths.text_encoder / "text_encoder", paths.text_encoder / "tokenizer"
    text_encoder = build_text_encoder(encoder_dir, device=device, dtype=precision_dtype(profile.train.precision))
    tokenizer = load_tokenizer(tokenizer_dir)
    # fp32 in every profile: SDXL's VAE is unstable in half precision
    vae = build_vae(components.vae).to(device).eval()
    pixels = profile.pixels(stage)
    buckets = aspect_ratio_buckets(pixels, profile.bucket_quantum_px) if stage.multi_aspect else None
    out = build_feature_cache(
        paths.train_dataset(profile), paths.features(name), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, resolution_px=pixels, caption_kind=stage.caption, max_tokens=stage.max_tokens,
        buckets=buckets, quality="high" if stage.quality == "high" else None, limit=stage.images,
        identity={"text_encoder": folder_hash(encoder_dir), "tokenizer": folder_hash(tokenizer_dir),
                  "vae": folder_hash(components.vae)},
        work_dir=paths.features_work, dense_captions=recaptions(ctx) if profile.recaptioned(stage) else None,
        raw_too=carries_raw(profile, name),
    )
    if rank == 0:
        save_null_caption(out, *null_caption_embedding(text_encoder, tokenizer, stage.max_tokens))
        source = " (recaptions)" if profile.recaptioned(stage) else ""
        print(f"features: {name} ({pixels} px, {stage.caption}{source}, {stage.max_tokens} tokens) -> {out}")


if __name__ == "__main__":
    main()
