"""The curriculum's DAG, rendered from params.yaml into DVC's ``dvc.yaml``: the curriculum is defined once.

A profile's stage table is the DAG: one DVC stage per row, named literally after it (the name that is
also the MLflow alias, the Prefect task and the output folder), each depending on its weak input's
output folder and on the params keys that define it; each feature set (``pixart.paths.feature_set``)
is a stage ``features-<set>`` of its own, on the keys that define that set only. DVC knows nothing of
``extends`` or ``stage_defaults``, so a stage's params are every key of the profile's ``extends``
chain that holds part of it.

On a cluster every stage runs in a fresh clone and finds what earlier stages produced in DVC's run
cache (flows/dvc_stage.py). DVC restores a stage from it only when every out is cached and none
persists (dvc/stage/cache.py ``_can_hash``; ``dvc push`` never sends a ``cache: false`` file), so no
out here is either: metrics are cached outs too, and no stage keeps state in its outs between runs.

``dvc.yaml`` is rendered for the active profile (params.yaml ``profile``): switching
profiles is ``pixart dag --write --profile NAME``, and a drifted or hand-edited ``dvc.yaml`` is refused
by ``pixart dag --check`` and by every stage DVC starts. This module writes YAML; it never imports DVC.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pixart import atomic
from pixart.config import (
    PARAMS_FILE,
    ParamsError,
    Profile,
    ablation_arms,
    extends_chain,
    load_profile,
    read_raw,
)
from pixart.eval.few_step import lcm_stages
from pixart.paths import FEATURE_FIELDS, REFERENCE_METRICS, feature_set, feature_sets
from pixart.rendered import require_rendering

DVC_FILE = "dvc.yaml"
HEADER = (
    "# Rendered from params.yaml (profile {profile}) by `pixart dag --write`: do not edit by hand.\n"
    "# `pixart dag --check` fails, and so does every stage under DVC, when this file and params.yaml differ.\n"
)
# The recorded reference run (`pixart report --record`, git-tracked): `dvc metrics show` lists it beside
# the stages' own metrics on any checkout, and `dvc metrics diff` compares a newly recorded run with it.
_REFERENCE_METRICS = ("pixeval.json", "pixeval_trend.json", "table4.json", "stage_times.json", "caption_stats.json",
                      "vaes.json", "recaption.json", "ablations.json")
REFERENCE = {
    "metrics": [f"{REFERENCE_METRICS}/{name}" for name in _REFERENCE_METRICS],
    "plots": [{f"{REFERENCE_METRICS}/pixeval_plot.csv": {"x": "stage"}},
              {f"{REFERENCE_METRICS}/loss_curves.csv": {"x": "step", "y": "loss"}}],
}
# What every stage entry point runs; `python` is the environment's own (a venv, /opt/venv in the image).
PYTHON = "python"
DATA_CODE = ["pixart/data/generate.py", "pixart/data/scenes.py", "pixart/data/format.py", "pixart/data/importers.py",
             "pixart/data/prepare.py"]
# the VAE trainer and the parts of the loop it runs on
VAE_CODE = [*(f"pixart/train/{m}.py" for m in ("vae", "loop", "checkpoint", "ema", "ds_config", "optim", "distributed")),
            "pixart/models/builders.py"]
TRAIN_CODE = ["stages/train.py", "stages/common.py", "pixart/stage_info.py", "pixart/train", "pixart/models",
              "pixart/diffusion"]


class _Keys:
    """The params.yaml keys that hold part of a profile's section, along its ``extends`` chain."""

    def __init__(self, raw_profiles: dict[str, Any], name: str) -> None:
        self.raw, self.chain = raw_profiles, extends_chain(raw_profiles, name)

    def __call__(self, *path: str) -> list[str]:
        keys = []
        for profile in self.chain:
            node: Any = self.raw[profile]
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                keys.append(".".join(("profiles", profile, *path)))
        return keys


def _local(path: Path | None) -> list[str]:
    """A pretrained file or folder as a dependency, so that DVC sees a user swap its weights."""
    return [] if path is None else [str(path)]


def _launched(module: str, num_gpus: int) -> str:
    """A stage's command: the module on one process, or on ``num_gpus`` under ``pixart launch``."""
    if num_gpus == 1:
        return f"{PYTHON} -m {module}"
    return f"{PYTHON} -m pixart launch --num-gpus {num_gpus} {module}"


def sharded_gpus(profile: Profile) -> dict[str, int]:
    """The processes of the DVC stages that are not rows of the stage table but shard over ranks
    (``pixart launch``): a feature set on as many as the widest stage that reads it trains on, a DMD
    stage's teacher pairs on the stage's own. A stage's pod gets as many GPUs."""
    trained = profile.trained()
    gpus = {f"features-{name}": max(trained[r].num_gpus for r in readers)
            for name, readers in feature_sets(profile).items()}
    gpus.update({f"{name}-pairs": s.num_gpus for name, s in profile.stages.items() if s.kind == "dmd"})
    if profile.recaption is not None:
        gpus["recaption"] = profile.recaption.num_gpus if profile.recaption.captioner == "vlm" else 1
    return gpus


def _stage_keys(profile: Profile, keys: _Keys, name: str, *field: str) -> list[str]:
    """The params keys that set ``field`` (all fields: none given) of a stage or an ablation arm: an arm
    is its stage's row, its ablation's entry over it."""
    arm_of = {arm: ablation for ablation, a in profile.claims().items()
              for arm in ablation_arms(ablation, a, profile.stages[a.stage])}
    if name not in arm_of:
        return [*keys("stages", name, *field), *keys("stage_defaults", *field)]
    ablation = arm_of[name]
    row = [*keys("stages", profile.claims()[ablation].stage, *field), *keys("stage_defaults", *field)]
    return [*row, *keys("ablations", ablation, *(("changes", *field) if field else ()))]


def _feature_stages(profile: Profile, keys: _Keys, gpus: dict[str, int]) -> dict[str, Any]:
    """One stage per feature set, on the params of its first stage that enter its key (an lr change
    re-encodes nothing) and the profile's keys that size its pixels and set the text encoder's dtype."""
    stages, trained = {}, profile.trained()
    for name, readers in feature_sets(profile).items():
        fields = [key for field in FEATURE_FIELDS for key in _stage_keys(profile, keys, name, field)]
        # whether the set carries raw captions too: any reader's caption mix
        fields += [key for r in readers for key in _stage_keys(profile, keys, r, "real_prompt_ratio")]
        fields = list(dict.fromkeys(fields))
        # a dense-caption set encodes the recaption stage's captions, unless the source is the truth
        recaptioned = profile.recaptioned(trained[name])
        stages[f"features-{name}"] = {
            "cmd": _launched(f"stages.features {name}", gpus[f"features-{name}"]),
            "deps": ["stages/features.py", "pixart/data/features.py", "pixart/data/feature_identity.py",
                     "pixart/data/buckets.py", "pixart/data/null_caption.py", "pixart/models/builders.py",
                     "pixart/hashing.py", "data/train",
                     "outputs/text-encoder", f"outputs/vae-{trained[name].vae}",
                     *(["pixart/captions/recaption.py", "outputs/recaption"] if recaptioned else [])],
            "params": ["profile", *fields, *keys("pixel_scale"), *keys("bucket_quantum_px"),
                       *keys("train", "precision"),
                       *(keys("recaption", "caption_source") if trained[name].caption == "dense" else [])],
            "outs": [f"features/{name}"],
        }
    return stages


def _recaption_stage(profile: Profile, keys: _Keys, gpus: dict[str, int]) -> dict[str, Any]:
    """recaption: after prepare-data, before the feature sets that read its captions."""
    cfg = profile.recaption
    clip = profile.pixeval.clip_path
    return {
        "cmd": _launched("stages.recaption", gpus["recaption"]),
        "deps": ["stages/recaption.py", "stages/common.py", "stages/features.py", "pixart/captions",
                 "pixart/eval/judge.py", "pixart/eval/images.py", "pixart/eval/clip_score.py", "pixart/data/scenes.py",
                 "pixart/data/caption_stats.py", "data/train", "data/heldout", *_local(cfg.model_path), *_local(clip)],
        "params": ["profile", *keys("recaption"), *keys("train", "precision"), *keys("pixeval", "clip_path")],
        "outs": ["outputs/recaption", "metrics/recaption"],
        "metrics": ["metrics/recaption.json"],
    }


def _stages(profile_name: str, profile: Profile, keys: _Keys) -> dict[str, Any]:
    data = profile.data
    sources = [data.path, getattr(data, "heldout_path", None)] if data.source != "generated" else []
    stages: dict[str, Any] = {
        "prepare-data": {
            "cmd": f"{PYTHON} -m stages.prepare_data",
            "deps": ["stages/prepare_data.py", "stages/common.py", *DATA_CODE, *(str(p) for p in sources if p)],
            "params": ["profile", *keys("data")],
            "outs": ["data/train", "data/heldout"],
        },
        "caption-stats": {
            "cmd": f"{PYTHON} -m stages.caption_stats",
            "deps": ["stages/caption_stats.py", "pixart/data/caption_stats.py", "data/train"],
            "params": ["profile"],
            "metrics": ["metrics/caption_stats.json"],
        },
        "text-encoder": {
            "cmd": f"{PYTHON} -m stages.text_encoder",
            "deps": ["stages/text_encoder.py", "pixart/models/builders.py", "data/train",
                     *_local(profile.text_encoder.path)],
            "params": ["profile", *keys("text_encoder"), *keys("model")],
            "outs": ["outputs/text-encoder"],
        },
        "vaes": {
            "cmd": f"{PYTHON} -m stages.vaes",
            "deps": ["stages/vaes.py", *VAE_CODE, "data/train", "data/heldout", *(p for v in profile.vaes.values() for p in _local(v.path))],
            "params": ["profile", *keys("vaes"), *keys("pixel_scale"), *keys("train")],
            "outs": [f"outputs/vae-{name}" for name in profile.vaes],
            "metrics": ["metrics/vaes.json"],
        },
    }
    gpus = sharded_gpus(profile)
    if profile.recaption is not None:
        stages["recaption"] = _recaption_stage(profile, keys, gpus)
    stages.update(_feature_stages(profile, keys, gpus))
    for name, stage in profile.trained().items():
        stage_params = ["profile", *_stage_keys(profile, keys, name), *keys("train"), *keys("model")]
        weak = [f"outputs/{stage.init_from}"] if stage.init_from else []
        # what the stage reads besides its weak input: an import stage converts a checkpoint and exports it
        # with the components and the data version, a training stage reads the features made from them
        if stage.kind == "import":
            reads = ["data/train", "outputs/text-encoder", f"outputs/vae-{stage.vae}"]
        else:
            reads = [f"features/{feature_set(profile, name)}"]
        if stage.kind == "dmd":
            stages[f"{name}-pairs"] = {
                "cmd": _launched(f"stages.teacher_pairs {name}", gpus[f"{name}-pairs"]),
                "deps": ["stages/teacher_pairs.py", "pixart/train/dmd_pairs.py", "pixart/diffusion", "pixart/models",
                         *reads, *weak],
                "params": stage_params,
                "outs": [f"outputs/{name}-pairs"],
            }
            weak = [*weak, f"outputs/{name}-pairs"]
        stages[name] = {
            # an import converts weights in one process; a training stage runs on its params' num_gpus
            "cmd": _launched(f"stages.train {name}", 1 if stage.kind == "import" else stage.num_gpus),
            "deps": [*TRAIN_CODE, *reads, *weak, *_local(stage.pretrained)],
            "params": stage_params,
            "outs": [f"outputs/{name}"],
        }
    pe = profile.pixeval
    if profile.judged:
        # a stage of its own: a PixEval re-run and the ablations read the same judge, trained once
        stages["judge"] = {
            "cmd": f"{PYTHON} -m stages.judge",
            "deps": ["stages/judge.py", "pixart/eval/judge.py", "pixart/eval/pixeval.py", "pixart/data/scenes.py",
                     "data/train"],
            "params": ["profile", *keys("pixeval", "judge_steps"), *keys("pixeval", "seed")],
            "outs": ["outputs/judge"],
        }
    stages["pixeval"] = {
        "cmd": f"{PYTHON} -m stages.pixeval",
        "deps": ["stages/pixeval.py", "stages/judge.py", "pixart/eval", "data/heldout", "data/train",
                 *(["outputs/judge"] if profile.judged else []),
                 *(f"outputs/{name}" for name in profile.stages), *_local(pe.inception_path), *_local(pe.clip_path)],
        "params": ["profile", *keys("pixeval")],
        "outs": ["metrics/pixeval", "outputs/pixeval-evaluations"],
        "metrics": ["metrics/pixeval.json", "metrics/pixeval_trend.json", "metrics/stage_times.json",
                    *(["metrics/table4.json"] if lcm_stages(profile) else [])],
        "plots": [{"metrics/pixeval_plot.csv": {"x": "stage"}}, {"metrics/loss_curves.csv": {"x": "step", "y": "loss"}}],
    }
    if profile.claims():
        stages["ablations"] = _ablations_stage(profile, keys)
    return stages


def _ablations_stage(profile: Profile, keys: _Keys) -> dict[str, Any]:
    """ablations: each claim's two arms PixEval'd on PixEval's prompts, seeds and judge; a claim whose
    arms train at the stage's own steps reads the stage as its control, from PixEval's evaluations."""
    pe = profile.pixeval
    stages = {a.stage: None for a in profile.claims().values() if not a.controlled}
    compared = {**stages, **dict.fromkeys(profile.arms())}
    return {
        "cmd": f"{PYTHON} -m stages.ablations",
        "deps": ["stages/ablations.py", "stages/pixeval.py", "stages/judge.py", "pixart/eval", "data/heldout",
                 *(["outputs/judge"] if profile.judged else []), *(f"outputs/{name}" for name in compared),
                 *(["outputs/pixeval-evaluations"] if stages else []),
                 *_local(pe.inception_path), *_local(pe.clip_path)],
        "params": ["profile", *keys("pixeval"), *keys("ablations")],
        "outs": ["metrics/ablations"],
        "metrics": ["metrics/ablations.json"],
    }


def render(params_file: Path = PARAMS_FILE) -> str:
    """dvc.yaml's text for the active profile of ``params_file``."""
    raw = read_raw(params_file)
    name, profile = load_profile(None, params_file)
    body = yaml.safe_dump({"stages": _stages(name, profile, _Keys(raw["profiles"], name)), **REFERENCE},
                          sort_keys=False, width=120)
    return HEADER.format(profile=name) + body


def dvc_file(params_file: Path = PARAMS_FILE) -> Path:
    return Path(params_file).parent / DVC_FILE


def set_active_profile(params_file: Path, name: str) -> None:
    """Point params.yaml's top-level ``profile:`` at ``name`` (which must exist), keeping the rest."""
    text = Path(params_file).read_text()
    if name not in read_raw(params_file)["profiles"]:
        raise ParamsError(f"{params_file}: profiles: no profile '{name}'")
    new, count = re.subn(r"^profile:.*$", f"profile: {name}", text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise ParamsError(f"{params_file}: no top-level 'profile:' line to set")
    atomic.write_text(Path(params_file), new)


def write(params_file: Path = PARAMS_FILE) -> Path:
    out = dvc_file(params_file)
    atomic.write_text(out, render(params_file))
    return out


def check(params_file: Path = PARAMS_FILE) -> None:
    """Raise ``pixart.rendered.Drift`` when dvc.yaml is missing or differs from what params.yaml renders."""
    require_rendering(dvc_file(params_file), render(params_file), str(params_file), "pixart dag --write")
