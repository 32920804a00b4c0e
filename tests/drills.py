"""``python -m tests.drills VARIANT ROOT LABEL``: train a loop variant (dmd, lcm, vae) for ``STEPS`` steps,
saving every second one, in a process that the crash drill can SIGKILL (PIXART_SIGKILL_AFTER_STEP) and a
re-run resumes. The world (a teacher and its pairs, or a dataset) is built in ROOT by the first call and
shared; LABEL names the run's own outputs and resumable state. Prints the exported weights' file."""

import sys
from pathlib import Path

from pixart import tracking
from pixart.config import TrainDefaults, VAEConfig, load_profile
from pixart.settings import Settings

STEPS = 4


def dmd(root: Path, label: str) -> Path:
    from pixart.train.components import Components
    from pixart.train.dmd import train_dmd
    from pixart.train.dmd_pairs import PAIRS_FILE, make_teacher_pairs
    from pixart.train.job import StageJob
    from tests.helpers_models import teacher_world

    teacher, features, pairs = root / "outputs/aes-512", root / "features/aes-512", root / "outputs/dmd-pairs"
    if not (pairs / PAIRS_FILE).exists():
        teacher_world(root)
        make_teacher_pairs(teacher, features, pairs, pairs=4, steps=2, cfg=4.5)
    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    stage = profile.stages["dmd"].model_copy(update={"steps": STEPS})
    job = StageJob(name="dmd", profile_name=name, profile=profile, stage=stage, features=features,
                   components=Components(vae=teacher / "vae", text_encoder=teacher),
                   out_dir=root / f"outputs/dmd-{label}", state_dir=root / f"state/dmd-{label}",
                   data_version="test", weak_input=teacher)
    return train_dmd(job, pairs / PAIRS_FILE) / "transformer/diffusion_pytorch_model.safetensors"


def lcm(root: Path, label: str) -> Path:
    from pixart.train.components import Components
    from pixart.train.job import StageJob
    from pixart.train.lcm import train_lcm
    from tests.helpers_models import teacher_world

    teacher, features = root / "outputs/aes-512", root / "features/aes-512"
    if not (features / "index.json").exists():
        teacher_world(root)
    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    job = StageJob(name="lcm", profile_name=name, profile=profile,
                   stage=profile.stages["lcm"].model_copy(update={"steps": STEPS}), features=features,
                   components=Components(vae=teacher / "vae", text_encoder=teacher),
                   out_dir=root / f"outputs/lcm-{label}", state_dir=root / f"state/lcm-{label}",
                   data_version="test", weak_input=teacher)
    return train_lcm(job) / "transformer/diffusion_pytorch_model.safetensors"


def vae(root: Path, label: str) -> Path:
    from pixart.data.generate import generate_dataset
    from pixart.train.vae import VAETrainer

    if not (root / "data").exists():
        generate_dataset(root / "data", n=8, seed=0, resolution_px=32)
    cfg = VAEConfig(config="old", steps=STEPS, batch_size=2)
    out = root / f"vae-{label}"
    VAETrainer("old", cfg, TrainDefaults(save_every=2, log_every=1), root / "data", root / "data", [32], out,
               root / f"state/vae-{label}", "drill").run()
    return out / "diffusion_pytorch_model.safetensors"


if __name__ == "__main__":
    variant, root, label = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    tracking.configure(Settings(root=root))
    print({"dmd": dmd, "lcm": lcm, "vae": vae}[variant](root, label))
