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
from tests.helpers_models import DEBUG_IMAGE_SIDE, DEBUG_LATENT_SIDE, debug_parts, perturb

PROMPT = "a small red circle on the left"
STEPS, CFG, SEED = 3, 4.5, 7


def assert_same_image(ours: np.ndarray, stock: np.ndarray) -> None:
    """Equal up to float summation order: our sampler feeds the caption features trimmed to the longest
    caption where the stock pipeline pads them to max_sequence_length; and the same weights in memory
    and loaded from the folder rendered one level apart in a full test session on a slow CI machine
    (alone they match bitwise). Either moves values by ~1e-6, so a pixel may round one level apart; a
    dropped weight would move whole images."""
    diff = np.abs(ours.astype(np.int16) - stock.astype(np.int16))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


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
    assert_same_image(generated, np.asarray(image))
    assert generated.std() > 0  # an image, not a constant
    in_memory = sample(
        parts, [PROMPT], steps=STEPS, cfg=CFG, seed=SEED, height=DEBUG_IMAGE_SIDE, width=DEBUG_IMAGE_SIDE
    )
    assert_same_image(np.asarray(in_memory[0]), generated)


def test_a_stage_with_the_packaged_minilm_encoder_loads_with_stock_pipeline_and_renders(tmp_path: Path) -> None:
    """The tiny profile's text encoder is a BertModel: model_index must name it, and diffusers must
    load and run the folder as it does a T5 one."""
    from diffusers import PixArtSigmaPipeline

    from pixart.config import load_profile
    from pixart.diffusion.schedule import dpm_solver_scheduler
    from pixart.models.builders import TINY_VAE_CONFIGS, build_vae, packaged_text_encoder
    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation
    from pixart.train.export import model_index

    text_encoder, tokenizer = packaged_text_encoder(load_profile("tiny")[1].text_encoder.package)
    torch.manual_seed(0)
    transformer = build_transformer(get_spec("tiny"), sample_size=DEBUG_LATENT_SIDE,
                                    interpolation_scale=pe_interpolation(256))  # fmt: skip
    perturb(transformer)
    parts = {"transformer": transformer.eval(), "vae": build_vae(TINY_VAE_CONFIGS["old"]).eval(),
             "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": dpm_solver_scheduler()}  # fmt: skip
    save_pipeline(tmp_path / "pipe", **parts)
    assert model_index(tmp_path / "pipe/text_encoder", parts["scheduler"])["text_encoder"] == ["transformers", "BertModel"]

    pipe = PixArtSigmaPipeline.from_pretrained(tmp_path / "pipe")
    assert type(pipe.text_encoder).__name__ == "BertModel"
    image = pipe(prompt=PROMPT, negative_prompt="", num_inference_steps=STEPS, guidance_scale=CFG,
                 generator=torch.Generator().manual_seed(SEED), height=DEBUG_IMAGE_SIDE, width=DEBUG_IMAGE_SIDE,
                 use_resolution_binning=False, clean_caption=False, max_sequence_length=120).images[0]  # fmt: skip
    in_memory = sample(parts, [PROMPT], steps=STEPS, cfg=CFG, seed=SEED, height=DEBUG_IMAGE_SIDE,
                       width=DEBUG_IMAGE_SIDE, max_tokens=120)  # fmt: skip
    assert_same_image(np.asarray(in_memory[0]), np.asarray(image))
