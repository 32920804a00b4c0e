"""Vector scenes: what the generated dataset knows exactly about each image.

A scene is a background colour plus 1..max_objects objects, each a shape with a colour, a size and
a cell of a 3x3 grid. Because the generator knows every attribute, PixEval can check text-image
alignment against the truth, and the two caption kinds of the paper can be written from it:
``raw`` (short, incomplete, sometimes wrong, like alt-text) and ``dense`` (complete and accurate,
like Share-Captioner's). Rendering is vector drawing at any height and width, so every resolution
stage sees real detail, never upsampled pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, model_validator

POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
SIZES = ("small", "large")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")

# How the dense caption places an object (the audit reads it back); the nouns (corner, side) are what a captioner would say.
WHERE = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left side",
    "center": "in the center",
    "right": "on the right side",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
_COUNTS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class SceneSpec(BaseModel):
    """Vocabulary and difficulty of the generated scenes; tune it to make conditioning learnable.
    params.yaml's ``data.generator`` section (pixart.config.GeneratorConfig) holds these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shapes: tuple[str, ...] = Field(("circle", "square", "triangle"), description=f"Subset of {SHAPES}.")
    colors: dict[str, tuple[int, int, int]] = Field(
        default_factory=lambda: {
            "red": (220, 30, 30),
            "orange": (245, 140, 20),
            "yellow": (240, 220, 30),
            "green": (30, 170, 60),
            "blue": (30, 80, 220),
            "purple": (140, 50, 190),
        },
        description="Object colour names and their RGB.",
    )
    backgrounds: dict[str, tuple[int, int, int]] = Field(
        default_factory=lambda: {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)},
        description="Background colour names and their RGB.",
    )
    max_objects: int = Field(2, ge=1, le=len(POSITIONS), description="Objects per scene, 1..max_objects.")
    size_fraction: dict[str, float] = Field(
        default_factory=lambda: {"small": 0.45, "large": 0.85},
        description=f"Fraction of the grid cell's shorter side that an object of each size in {SIZES} spans.",
    )
    raw_wrong_prob: float = Field(0.2, ge=0, le=1, description="Chance that a raw caption names a wrong colour.")
    raw_omit_prob: float = Field(0.5, ge=0, le=1, description="Chance that a raw caption drops an attribute.")
    low_quality_fraction: float = Field(
        0.3, ge=0, le=1, description="Share of degraded images (blur, JPEG, noise; quality 'low'): the non-aesthetic tier."
    )
    square_fraction: float = Field(0.5, ge=0, le=1, description="Share of square images; the rest are 0.25..4.")
    min_ratio: float = Field(0.25, gt=0, description="Smallest height/width of non-square images.")
    max_ratio: float = Field(4.0, gt=0, description="Largest height/width of non-square images.")

    @model_validator(mode="after")
    def _check(self) -> SceneSpec:
        unknown = sorted(set(self.shapes) - set(SHAPES))
        if unknown or not self.shapes:
            raise ValueError(f"shapes: {unknown or 'empty'} not drawable; choose from {SHAPES}")
        if len(self.colors) < 2:
            raise ValueError("colors: need at least two, or a raw caption cannot name a wrong one")
        if not self.backgrounds:
            raise ValueError("backgrounds: need at least one")
        if set(self.size_fraction) != set(SIZES) or not all(0 < f <= 1 for f in self.size_fraction.values()):
            raise ValueError(f"size_fraction: {self.size_fraction} needs each of {SIZES} in (0, 1]")
        if not self.min_ratio <= 1 <= self.max_ratio:
            raise ValueError(f"min_ratio..max_ratio ({self.min_ratio}..{self.max_ratio}) must contain 1")
        return self


class SceneObject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: str
    color: str
    size: str
    position: str


class Scene(BaseModel):
    """One generated image's content, as the renderer draws it and data_info.json stores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    background: str
    objects: tuple[SceneObject, ...]


def sample_scene(rng: np.random.Generator, spec: SceneSpec) -> Scene:
    """A random scene: 1..max_objects objects in distinct grid cells."""
    n = int(rng.integers(1, spec.max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    colors, backgrounds = list(spec.colors), list(spec.backgrounds)
    objects = tuple(
        SceneObject(
            shape=spec.shapes[int(rng.integers(len(spec.shapes)))],
            color=colors[int(rng.integers(len(colors)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            position=POSITIONS[int(c)],
        )
        for c in sorted(cells)
    )
    return Scene(background=backgrounds[int(rng.integers(len(backgrounds)))], objects=objects)


def sample_ratio(rng: np.random.Generator, spec: SceneSpec) -> float:
    """Height/width: 1 with probability square_fraction, else log-uniform in [min_ratio, max_ratio]."""
    if rng.random() < spec.square_fraction:
        return 1.0
    return float(np.exp(rng.uniform(np.log(spec.min_ratio), np.log(spec.max_ratio))))


def dense_caption(scene: Scene) -> str:
    """Complete and accurate: count, then every object's size, colour, shape and place, then background."""
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    count = _COUNTS[n] if n < len(_COUNTS) else str(n)
    parts = [f"a {o.size} {o.color} {o.shape} {WHERE[o.position]}" for o in scene.objects]
    # a generated scene has an object; a recaptioner may see none
    listing = "" if n == 0 else ": " + (parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
    return (
        f"An image with {count} {noun} on a plain {scene.background} background{listing}. "
        f"The background color is {scene.background}."
    )


def raw_caption(scene: Scene, rng: np.random.Generator, spec: SceneSpec) -> str:
    """Alt-text-like: some objects and attributes left out, a colour wrong with raw_wrong_prob."""
    kept = [o for i, o in enumerate(scene.objects) if i == 0 or rng.random() >= spec.raw_omit_prob]
    order = rng.permutation(len(kept))
    phrases = []
    for i in order:
        obj = kept[int(i)]
        words = []
        if rng.random() >= spec.raw_omit_prob:
            words.append(obj.size)
        if rng.random() >= spec.raw_omit_prob:
            color = obj.color
            if rng.random() < spec.raw_wrong_prob:
                others = [c for c in spec.colors if c != obj.color]
                color = others[int(rng.integers(len(others)))]
            words.append(color)
        words.append(obj.shape)
        phrases.append(" ".join(words))
    text = " and ".join(phrases)
    if rng.random() < 0.3:
        text = f"{text} on {scene.background}"
    return text


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        k = r / np.sqrt(2)
        return [(cx - k, cy - k), (cx + k, cy - k), (cx + k, cy + k), (cx - k, cy + k)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
    elif shape == "hexagon":
        angles = np.deg2rad(np.arange(6) * 60)
    elif shape == "star":
        angles = np.deg2rad(np.arange(10) * 36 - 90)
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii, strict=True)]
    else:
        raise ValueError(f"shape: '{shape}' is not one of {SHAPES}")
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]


def _mix(color: tuple[int, int, int], other: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(round((1 - t) * c + t * o) for c, o in zip(color, other, strict=True))  # type: ignore[return-value]


def _draw_object(canvas: Image.Image, obj: SceneObject, spec: SceneSpec, height: int, width: int) -> None:
    row, col = divmod(POSITIONS.index(obj.position), 3)
    cell_h, cell_w = height / 3, width / 3
    cx, cy = (col + 0.5) * cell_w, (row + 0.5) * cell_h
    r = 0.5 * spec.size_fraction[obj.size] * min(cell_h, cell_w)
    fill = spec.colors[obj.color]
    # Draw on a patch around the object only: full-canvas layers at 4x supersampling of a 4:1 image
    # would cost tens of megapixels per object.
    left, top = int(cx - r) - 2, int(cy - r) - 2
    size = (int(2 * r) + 5, int(2 * r) + 5)
    px, py = cx - left, cy - top
    outline = _polygon(obj.shape, px, py, r) if obj.shape != "circle" else None
    mask = Image.new("L", size, 0)
    mdraw = ImageDraw.Draw(mask)
    if outline is None:
        mdraw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    else:
        mdraw.polygon(outline, fill=255)
    # The fine detail that only higher resolutions resolve: diagonal stripes a twelfth of the object
    # wide and a thin darker outline. At low resolution they average into the object's colour.
    layer = Image.new("RGB", size, fill)
    ldraw = ImageDraw.Draw(layer)
    period = max(2.0 * r / 12, 1.0)
    stripe = _mix(fill, (255, 255, 255), 0.35)
    x = px - 3 * r
    while x < px + r:
        ldraw.polygon(
            [(x, py + r), (x + period / 2, py + r), (x + period / 2 + 2 * r, py - r), (x + 2 * r, py - r)],
            fill=stripe,
        )
        x += period
    edge, width = _mix(fill, (0, 0, 0), 0.5), max(round(r / 20), 1)
    if outline is None:
        ldraw.ellipse((px - r, py - r, px + r, py + r), outline=edge, width=width)
    else:
        ldraw.line(outline + outline[:1], fill=edge, width=width, joint="curve")
    canvas.paste(layer, (left, top), mask)


def render_scene(scene: Scene, height: int, width: int, spec: SceneSpec, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` at height x width pixels, supersampled ``supersample``x for antialiasing."""
    if height < 1 or width < 1:
        raise ValueError(f"height, width: {height}x{width} must be positive")
    big_h, big_w = height * supersample, width * supersample
    canvas = Image.new("RGB", (big_w, big_h), spec.backgrounds[scene.background])
    for obj in scene.objects:
        _draw_object(canvas, obj, spec, big_h, big_w)
    return canvas.resize((width, height), Image.Resampling.BOX) if supersample > 1 else canvas


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The low-quality tier: one or more of blur, JPEG artefacts and sensor-like noise."""
    kinds = [k for k in ("blur", "jpeg", "noise") if rng.random() < 0.5] or ["jpeg"]
    side = min(image.size)
    if "blur" in kinds:
        image = image.filter(ImageFilter.GaussianBlur(radius=max(0.5, side * float(rng.uniform(0.01, 0.025)))))
    if "noise" in kinds:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, float(rng.uniform(8, 20)), size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if "jpeg" in kinds:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(5, 20)))
        buf.seek(0)
        image = Image.open(buf).convert("RGB")
    return image
