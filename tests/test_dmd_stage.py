"""The DMD stage end to end on a hand-built debug world: teacher pairs, train_dmd (with a resumable
save), and a one-step pipeline folder that the one-step sampler renders."""

import json

import torch
from safetensors.torch import save_file

from pixart import atomic, tracking
from pixart.config import load_profile
from pixart.data.feature_identity import CACHE_FORMAT
from pixart.data.null_caption import save_null_caption
from pixart.diffusion.one_step import one_step_t_gen, sample_one_step
from pixart.models.builders import encode_captions
from pixart.models.pipeline import save_pipeline
from pixart.settings import Settings
from pixart.train.components import Components
from pixart.train.dmd import train_dmd
from pixart.train.dmd_pairs import TeacherPairs, make_teacher_pairs
from pixart.train.job import StageJob
from tests.helpers_models import (
    CAPTIONS,
    DEBUG_IMAGE_SIDE,
    DEBUG_LATENT_SIDE,
    debug_parts,
    perturb,
    write_stage_info,
)


def _world(root):
    """Teacher pipeline, frozen components and a square feature cache of 8 captions, as the curriculum's
    stages would leave them."""
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


def test_dmd_stage_exports_a_one_step_pipeline(tmp_path):
    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = _world(tmp_path)
    pairs = make_teacher_pairs(teacher, features, tmp_path / "outputs/dmd-pairs", pairs=6, steps=2, cfg=4.5)
    stored = TeacherPairs(pairs)
    assert len(stored) == 6 and stored.batch(torch.tensor([5]))["index"].tolist() == [5]

    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    stage = profile.stages["dmd"].model_copy(update={"steps": 3})
    job = StageJob(name="dmd", profile_name=name, profile=profile, stage=stage, features=features,
                   components=components, out_dir=tmp_path / "outputs/dmd", state_dir=tmp_path / "state",
                   data_version="test", weak_input=teacher)
    out = train_dmd(job, pairs)

    assert sorted(p.name for p in (tmp_path / "state/fake-score").glob("step-*")) == ["step-00000002", "step-00000003"]
    info = json.loads((out / "stage.json").read_text())
    assert info["parent"] == "aes-512" and info["model_version"]
    described = tracking.client._ctx().client.get_model_version("pixart-sigma", info["model_version"]).description
    assert described.startswith("dmd: ") and "weak input aes-512" in described
    assert one_step_t_gen(out) == 400 and one_step_t_gen(teacher) is None
    images = sample_one_step(out, ["a small red circle on the left"], t_gen=400, height=DEBUG_IMAGE_SIDE,
                             width=DEBUG_IMAGE_SIDE, max_tokens=16)
    assert images[0].size == (DEBUG_IMAGE_SIDE, DEBUG_IMAGE_SIDE)
