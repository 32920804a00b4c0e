"""A compressed checkpoint saved by us loads with PixArtSigmaPipeline.from_pretrained offline, really
compresses, and renders the same image as ``pixart generate``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from pixart.diffusion.sampling import sample
from pixart.models.kv_compress import KVCompressAttnProcessor
from pixart.models.pipeline import save_pipeline
from tests.helpers_models import DEBUG_IMAGE_SIDE, debug_parts, perturb

PROMPT = "a small red circle on the left"
STEPS, CFG, SEED = 3, 4.5, 7


def test_compressed_checkpoint_loads_with_stock_pipeline_and_matches_pixart_generate(tmp_path: Path) -> None:
    from diffusers import PixArtSigmaPipeline

    from pixart.cli import app

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    parts = debug_parts(tmp_path / "tokenizer")
    perturb(parts["transformer"])  # trained-looking weights: the averaging init would survive a dropped load
    save_pipeline(tmp_path / "pipe", **parts)
    index = json.loads((tmp_path / "pipe/model_index.json").read_text())
    assert index["transformer"] == ["pixart.models.transformer", "PixArtSigmaTransformer"]

    pipe = PixArtSigmaPipeline.from_pretrained(tmp_path / "pipe")
    processors = pipe.transformer.kv_compress_processors()
    assert list(processors) == [1]
    assert isinstance(pipe.transformer.transformer_blocks[1].attn1.processor, KVCompressAttnProcessor)
    saved = parts["transformer"].kv_compress_processors()[1].state_dict()
    for key, value in processors[1].state_dict().items():
        assert torch.equal(value, saved[key]), key

    image = pipe(
        prompt=PROMPT,
        negative_prompt="",
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator().manual_seed(SEED),
        height=DEBUG_IMAGE_SIDE,
        width=DEBUG_IMAGE_SIDE,
        use_resolution_binning=False,
        clean_caption=False,
    ).images[0]

    out = tmp_path / "generated.png"
    args = ["generate", "--model", str(tmp_path / "pipe"), "--prompt", PROMPT, "--steps", str(STEPS),
            "--cfg", str(CFG), "--seed", str(SEED), "--height", str(DEBUG_IMAGE_SIDE),
            "--width", str(DEBUG_IMAGE_SIDE), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    generated = np.asarray(Image.open(out).convert("RGB"))
    assert generated.shape == (DEBUG_IMAGE_SIDE, DEBUG_IMAGE_SIDE, 3)
    assert np.array_equal(generated, np.asarray(image))
    assert generated.std() > 0  # an image, not a constant
    in_memory = sample(
        parts, [PROMPT], steps=STEPS, cfg=CFG, seed=SEED, height=DEBUG_IMAGE_SIDE, width=DEBUG_IMAGE_SIDE
    )
    assert np.array_equal(np.asarray(in_memory[0]), generated)
