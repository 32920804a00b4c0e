"""The alignment judge: a small CNN, trained on the generated dataset's real images, that reads a
scene back from pixels — per 3x3 grid cell: empty, or (shape, colour, size) — plus the background.

PixEval asks it whether a generated image shows what its prompt's scene says. It is only trusted
when its accuracy on held-out real images is at least `MIN_HELD_OUT_ACCURACY`; below that it
refuses to score. The vocabulary is read from the dataset, so the judge follows the generator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import trange

from pixart import atomic
from pixart.data.format import load_dataset
from pixart.data.scenes import POSITIONS, Scene, SceneObject
from pixart.eval.images import Images, as_float_nchw, resize

MIN_HELD_OUT_ACCURACY = 0.90
WEIGHTS, CONFIG = "judge.safetensors", "judge.json"
ATTRIBUTES = ("shape", "color", "size")
SceneLike = Scene | Mapping


class JudgeTooInaccurate(RuntimeError):
    """The judge's held-out accuracy on real images is below MIN_HELD_OUT_ACCURACY."""


@dataclass(frozen=True)
class Vocabulary:
    shape: tuple[str, ...]
    color: tuple[str, ...]
    size: tuple[str, ...]
    background: tuple[str, ...]

    def index(self, field: str, word: str) -> int:
        words = getattr(self, field)
        if word not in words:
            raise ValueError(f"scene {field} '{word}' is unknown to the judge (it knows {list(words)})")
        return words.index(word)


@dataclass(frozen=True)
class JudgeReport:
    """How far the judge can be trusted, measured on real images it did not train on."""

    held_out_accuracy: float  # fraction of right decisions: 9 cells empty/not, attributes, background
    held_out_alignment: float  # mean alignment of held-out real images with their own scenes
    chance_alignment: float  # the same images scored against shuffled scenes
    n_train: int
    n_held_out: int
    steps: int
    resolution: int
    seconds: float


class JudgeNet(nn.Module):
    """Conv features max-pooled over each grid cell; one head shared by the 9 cells, one for background.

    Pooling exactly over the 3x3 grid ties a cell's prediction to the pixels of that cell, and the
    shared head lets every cell of every image teach the same classifier.
    """

    def __init__(self, vocab: Vocabulary, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(3, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 2 * width), *block(2 * width, 2 * width),
        )  # fmt: skip
        self.splits = (1, len(vocab.shape), len(vocab.color), len(vocab.size))
        self.cell_head = nn.Sequential(
            nn.Linear(2 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, sum(self.splits))
        )
        self.background_head = nn.Linear(2 * width, len(vocab.background))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N,3,H,W) in [0,1] → occupied (N,9) logit, shape/color/size (N,9,K) logits, background (N,B)."""
        h = self.body(x * 2 - 1)
        cells = F.adaptive_max_pool2d(h, 3).flatten(2).transpose(1, 2)  # (N, 9, C), row-major = POSITIONS
        occupied, shape, color, size = self.cell_head(cells).split(self.splits, dim=-1)
        return occupied.squeeze(-1), shape, color, size, self.background_head(h.mean(dim=(2, 3)))


@dataclass
class _Targets:
    occupied: torch.Tensor  # (N, 9) float
    shape: torch.Tensor  # (N, 9) long, -100 where empty
    color: torch.Tensor
    size: torch.Tensor
    background: torch.Tensor  # (N,) long

    def __getitem__(self, idx: torch.Tensor) -> _Targets:
        return _Targets(**{k: v[idx] for k, v in vars(self).items()})


def _scene(scene: SceneLike) -> Scene:
    return scene if isinstance(scene, Scene) else Scene.model_validate(dict(scene))


def _encode(scenes: Sequence[SceneLike], vocab: Vocabulary) -> _Targets:
    n = len(scenes)
    t = _Targets(
        occupied=torch.zeros(n, 9),
        shape=torch.full((n, 9), -100),
        color=torch.full((n, 9), -100),
        size=torch.full((n, 9), -100),
        background=torch.zeros(n, dtype=torch.long),
    )
    for i, raw in enumerate(scenes):
        scene = _scene(raw)
        t.background[i] = vocab.index("background", scene.background)
        for obj in scene.objects:
            if obj.position not in POSITIONS:
                raise ValueError(f"scene {i}: position '{obj.position}' is not one of {POSITIONS}")
            cell = POSITIONS.index(obj.position)
            if t.occupied[i, cell]:
                raise ValueError(
                    f"scene {i}: two objects in cell '{obj.position}'; the judge reads one per cell"
                )
            t.occupied[i, cell] = 1
            for field in ATTRIBUTES:
                getattr(t, field)[i, cell] = vocab.index(field, getattr(obj, field))
    return t


def _check_square(images: torch.Tensor) -> None:
    h, w = images.shape[-2:]
    if abs(h - w) > 1:
        raise ValueError(f"images: the judge reads square images only (trained on them), got {h}x{w}")


def _load_real_images(dataset_dir: Path, resolution: int, square_only: bool = True) -> tuple[torch.Tensor, list[Scene]]:
    """The scene-annotated images of a dataset (the square ones only, unless ``square_only`` is
    False: then the others squeezed to a square), resized to ``resolution``."""
    images, scenes = [], []
    for entry in load_dataset(dataset_dir):
        if entry.scene is None or (square_only and abs(entry.height - entry.width) > 1):
            continue
        path = Path(dataset_dir) / entry.path
        with Image.open(path) as im:
            pixels = torch.from_numpy(np.array(im.convert("RGB"))).unsqueeze(0)
        images.append(resize(as_float_nchw(pixels), resolution))
        scenes.append(entry.scene)
    if len(images) < 10:
        raise ValueError(
            f"{dataset_dir}: {len(images)} {'square ' if square_only else ''}images with a 'scene'; the judge needs "
            "at least 10"
        )
    return torch.cat(images), scenes


def _vocabulary(scenes: Sequence[Scene]) -> Vocabulary:
    objects = [o for s in scenes for o in s.objects]
    return Vocabulary(
        shape=tuple(sorted({o.shape for o in objects})),
        color=tuple(sorted({o.color for o in objects})),
        size=tuple(sorted({o.size for o in objects})),
        background=tuple(sorted({s.background for s in scenes})),
    )


@dataclass(frozen=True)
class _Reading:
    """What the judge sees: per cell occupied (bool) and attribute indices, and the background."""

    occupied: torch.Tensor
    shape: torch.Tensor
    color: torch.Tensor
    size: torch.Tensor
    background: torch.Tensor


def _read(net: JudgeNet, images: torch.Tensor, batch_size: int = 256) -> _Reading:
    net.eval()
    parts = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            occ, shape, color, size, bg = net(images[i : i + batch_size])
            parts.append((occ > 0, shape.argmax(-1), color.argmax(-1), size.argmax(-1), bg.argmax(-1)))
    return _Reading(*(torch.cat(p) for p in zip(*parts, strict=True)))


def _accuracy(reading: _Reading, t: _Targets) -> float:
    right = (reading.occupied == t.occupied.bool()).sum() + (reading.background == t.background).sum()
    total = t.occupied.numel() + t.background.numel()
    mask = t.occupied.bool()
    for field in ATTRIBUTES:
        right += (getattr(reading, field)[mask] == getattr(t, field)[mask]).sum()
        total += int(mask.sum())
    return float(right) / total


def _alignment(reading: _Reading, t: _Targets) -> torch.Tensor:
    """Per image: the fraction of prompted facts seen — each object's shape, colour and size in its
    cell (a missing object fails all three), the object count, and the background."""
    mask = t.occupied.bool()
    seen = torch.zeros(len(mask))
    for field in ATTRIBUTES:
        seen += ((getattr(reading, field) == getattr(t, field)) & reading.occupied & mask).sum(1)
    seen += (reading.occupied.sum(1) == mask.sum(1)).float()
    seen += (reading.background == t.background).float()
    return seen / (len(ATTRIBUTES) * mask.sum(1) + 2)


def _loss(net: JudgeNet, images: torch.Tensor, t: _Targets) -> torch.Tensor:
    occ, shape, color, size, bg = net(images)
    loss = F.binary_cross_entropy_with_logits(occ, t.occupied) + F.cross_entropy(bg, t.background)
    for logits, target in ((shape, t.shape), (color, t.color), (size, t.size)):
        loss = loss + F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
    return loss


class Judge:
    """A trained judge: `alignment(images, scenes)` scores generated images against their scenes."""

    def __init__(self, net: JudgeNet, vocab: Vocabulary, report: JudgeReport):
        self.net, self.vocab, self.report = net.eval(), vocab, report

    def _require_trusted(self) -> None:
        if self.report.held_out_accuracy < MIN_HELD_OUT_ACCURACY:
            raise JudgeTooInaccurate(
                f"judge held-out accuracy {self.report.held_out_accuracy:.3f} on real images is below "
                f"{MIN_HELD_OUT_ACCURACY:.2f}; train it longer or at a higher resolution before using it"
            )

    def _prepare(self, images: Images) -> torch.Tensor:
        x = as_float_nchw(images)
        _check_square(x)
        return resize(x, self.report.resolution)

    def alignment(self, images: Images, scenes: Sequence[SceneLike]) -> torch.Tensor:
        """Per-image alignment in [0, 1]: fraction of the scene's facts (each object's shape, colour
        and size at its cell, the object count, the background) that the judge sees in the image."""
        self._require_trusted()
        if len(images) != len(scenes):
            raise ValueError(f"images ({len(images)}) and scenes ({len(scenes)}) differ in number")
        return _alignment(_read(self.net, self._prepare(images)), _encode(scenes, self.vocab))

    def scenes(self, images: torch.Tensor) -> list[Scene]:
        """What it reads in each image (float NCHW in [0, 1] at its resolution): per cell an object or
        none, and the background, as scenes."""
        reading, scenes = _read(self.net, images), []
        for i in range(len(images)):
            objects = []
            for cell in range(len(POSITIONS)):
                if reading.occupied[i, cell]:
                    words = {f: getattr(self.vocab, f)[int(getattr(reading, f)[i, cell])] for f in ATTRIBUTES}
                    objects.append(SceneObject(position=POSITIONS[cell], **words))
            scenes.append(Scene(background=self.vocab.background[int(reading.background[i])], objects=tuple(objects)))
        return scenes

    def save(self, path: Path) -> None:
        """Write ``path/judge.safetensors`` and ``path/judge.json`` (vocabulary, width, report) atomically."""
        from safetensors.torch import save_file

        with atomic.folder(Path(path)) as tmp:
            save_file(self.net.state_dict(), tmp / WEIGHTS)
            config = {"vocabulary": asdict(self.vocab), "width": self.net.body[0].out_channels,
                      "report": asdict(self.report)}  # fmt: skip
            atomic.write_json(tmp / CONFIG, config)

    @classmethod
    def load(cls, path: Path) -> Judge:
        """Load a judge saved by `train_judge` / `save`."""
        from safetensors.torch import load_file

        path = Path(path)
        for name in (CONFIG, WEIGHTS):
            if not (path / name).is_file():
                raise FileNotFoundError(f"judge file not found: {path / name}")
        config = json.loads((path / CONFIG).read_text())
        vocab = Vocabulary(**{k: tuple(v) for k, v in config["vocabulary"].items()})
        net = JudgeNet(vocab, width=config["width"])
        net.load_state_dict(load_file(path / WEIGHTS), strict=True)
        return cls(net, vocab, JudgeReport(**config["report"]))


def train_judge(
    dataset_dir: Path,
    out: Path,
    resolution: int = 48,
    steps: int = 400,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 32,
    held_out_fraction: float = 0.2,
    square_only: bool = True,
) -> JudgeReport:
    """Train the judge on a dataset's square real images (every image with ``square_only`` False: the
    recaptioner's reader), measure it on a held-out part, save to ``out``."""
    start = time.perf_counter()
    images, scenes = _load_real_images(Path(dataset_dir), resolution, square_only)
    vocab = _vocabulary(scenes)
    targets = _encode(scenes, vocab)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=g)
    n_held = max(1, round(held_out_fraction * len(images)))
    held, train = order[:n_held], order[n_held:]

    torch.manual_seed(seed)
    net = JudgeNet(vocab, width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    net.train()
    for _ in trange(steps, desc="train judge", leave=False):
        idx = train[torch.randint(len(train), (batch_size,), generator=g)]
        loss = _loss(net, images[idx], targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    reading, held_targets = _read(net, images[held]), targets[held]
    shuffled = held_targets[torch.roll(torch.arange(n_held), 1)]
    report = JudgeReport(
        held_out_accuracy=_accuracy(reading, held_targets),
        held_out_alignment=float(_alignment(reading, held_targets).mean()),
        chance_alignment=float(_alignment(reading, shuffled).mean()),
        n_train=len(train),
        n_held_out=n_held,
        steps=steps,
        resolution=resolution,
        seconds=time.perf_counter() - start,
    )
    Judge(net, vocab, report).save(Path(out))
    return report
