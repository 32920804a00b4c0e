"""features: the VAE latents and T5 features of every feature set the curriculum trains on.

One feature set per distinct (VAE, resolution, caption kind, max tokens, buckets, quality), named
after the first stage that needs it. Each set is content-keyed: an unchanged set is not recomputed,
so this stage re-runs cheaply whenever any stage's params change.
"""

import torch

from pixart import atomic
from pixart.data.buckets import aspect_ratio_buckets
from pixart.data.features import build_feature_cache
from pixart.data.null_caption import save_null_caption
from pixart.models.builders import build_text_encoder, build_vae, load_tokenizer, null_caption_embedding
from pixart.paths import feature_set
from pixart.train.components import Components
from stages.common import parse


def main() -> None:
    ctx = parse(__doc__)
    profile, paths = ctx.profile, ctx.paths
    text_encoder = build_text_encoder(paths.text_encoder / "text_encoder").eval()
    tokenizer = load_tokenizer(paths.text_encoder / "tokenizer")
    vaes: dict[str, torch.nn.Module] = {}
    for name, stage in profile.stages.items():
        if stage.kind == "import":
            atomic.write_json(paths.features(name) / "import.json",
                              {"stage": name, "kind": "import", "features": None, "pretrained": str(stage.pretrained)})
    sets = {feature_set(profile, name) for name, s in profile.stages.items() if s.kind != "import"}
    for name in (n for n in profile.stages if n in sets):
        stage = profile.stages[name]
        components = Components.for_stage(stage, paths)
        if stage.vae not in vaes:
            vaes[stage.vae] = build_vae(components.vae).eval()
        pixels = profile.pixels(stage)
        buckets = aspect_ratio_buckets(pixels, profile.bucket_quantum_px) if stage.multi_aspect else None
        out = build_feature_cache(
            paths.train_dataset(profile), paths.features(name), vae=vaes[stage.vae], text_encoder=text_encoder,
            tokenizer=tokenizer, resolution_px=pixels, caption_kind=stage.caption, max_tokens=stage.max_tokens,
            buckets=buckets, quality="high" if stage.quality == "high" else None, limit=stage.images,
        )
        save_null_caption(out, *null_caption_embedding(text_encoder, tokenizer, stage.max_tokens))
        print(f"features: {name} ({pixels} px, {stage.caption}, {stage.max_tokens} tokens) -> {out}")


if __name__ == "__main__":
    main()
