"""Real captioned images for tests: Noto Color Emoji glyphs named by their Unicode names (Debian's
fonts-noto-color-emoji, which CI installs), in the folder layout users import: an image and a
same-named .txt raw caption, optionally a .dense.txt dense one."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_SIZE = 109  # the only size of the font's bitmap strikes


def require_emoji_font() -> None:
    """Skip without the font, except in CI, where its absence is a broken set-up, not a pass."""
    if not EMOJI_FONT.is_file():
        message = f"{EMOJI_FONT} absent: apt-get install fonts-noto-color-emoji"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def emoji_codepoints() -> list[int]:
    """Single-code-point symbols (So) and those newer than this Python's Unicode tables (Cn, unnamed)."""
    from fontTools.ttLib import TTFont

    return [cp for cp in TTFont(str(EMOJI_FONT), lazy=True).getBestCmap()
            if unicodedata.category(chr(cp)) in ("So", "Cn")]


def write_emoji(src: Path, codepoints: list[int], *, dense: bool = False) -> None:
    """One PNG per code point with its lower-case Unicode name as the .txt caption ('' when unnamed);
    with ``dense``, a longer .dense.txt caption as a recaptioner would write it."""
    font = ImageFont.truetype(str(EMOJI_FONT), EMOJI_SIZE)
    src.mkdir(parents=True, exist_ok=True)
    for cp in codepoints:
        left, top, right, bottom = font.getbbox(chr(cp))
        img = Image.new("RGB", (right - left + 8, bottom - top + 8), (255, 255, 255))
        ImageDraw.Draw(img).text((4 - left, 4 - top), chr(cp), font=font, embedded_color=True)
        img.save(src / f"u{cp:05x}.png")
        name = unicodedata.name(chr(cp), "").lower()
        (src / f"u{cp:05x}.txt").write_text(name)
        if dense and name:
            (src / f"u{cp:05x}.dense.txt").write_text(
                f"a colour emoji of {name}, drawn as a single glyph centred on a plain white background")
