"""The paper's caption panels: a few held-out images, each with its raw caption, its recaption and the
truth side by side, the words that claim what is not in the image struck through (``audit.score``).
Markdown with the images inlined, for the stage's MLflow run and the Prefect UI alike."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from pixart.captions.audit import Span, read_caption, score
from pixart.data.scenes import Scene, SceneSpec

PANEL_PX = 128


def marked(caption: str, wrong: Sequence[Span]) -> str:
    """``caption`` with each wrong span as **~~span~~** (markdown)."""
    out, last = [], 0
    for start, end in wrong:
        out += [caption[last:start], f"**~~{caption[start:end]}~~**"]
        last = end
    return "".join([*out, caption[last:]]).replace("|", "\\|")


def _inline_png(path: Path) -> str:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((PANEL_PX, PANEL_PX))
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
    return f"![{path.name}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def panels_markdown(images: Sequence[Path], sources: Mapping[str, Sequence[str]], scenes: Sequence[Scene | None],
                    spec: SceneSpec | None, title: str) -> str:
    """One table row per image: the image, then one column per caption source; hallucinated words are
    struck through where the image's scene is known."""
    names = list(sources)
    lines = [f"# {title}", "", "Struck through: what the caption says that is not in the image.", "",
             "| image | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, path in enumerate(images):
        cells = []
        for name in names:
            caption = sources[name][i]
            known = spec is not None and scenes[i] is not None
            cells.append(marked(caption, score(read_caption(caption, spec), scenes[i]).wrong) if known  # type: ignore[arg-type]
                         else caption.replace("|", "\\|"))
        lines.append(f"| {_inline_png(path)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
