"""tiny's recaptioner: a scene reader trained here, whose reading is written as a dense caption.

The reader is the judge's network (``pixart.eval.judge``) trained on every training image, of any
aspect (squeezed to a square: the 3x3 grid is relative to the image, so each cell keeps its
objects), under its own seed, so it is a second network, not PixEval's judge grading its own reading.
What it sees in an image (per cell: empty, or shape, colour and size; the background) goes through the
generator's ``dense_caption``: the dataset's phrasing, and the reader's mistakes as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixart.data.scenes import dense_caption
from pixart.eval.images import as_float_nchw, resize
from pixart.eval.judge import Judge, JudgeReport, train_judge


class SceneCaptioner:
    def __init__(self, reader: Judge) -> None:
        self.reader = reader

    @classmethod
    def train(cls, dataset_dir: Path, out: Path, *, steps: int, seed: int) -> SceneCaptioner:
        train_judge(dataset_dir, out, steps=steps, seed=seed, square_only=False)
        return cls(Judge.load(out))

    @property
    def report(self) -> JudgeReport:
        return self.reader.report

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        side = self.reader.report.resolution
        # the resize the reader trained on (train_judge's), one image at a time: their sizes differ
        x = torch.cat([resize(as_float_nchw(np.array(im.convert("RGB"))[None]), side) for im in images])
        return [dense_caption(scene) for scene in self.reader.scenes(x)]
