"""Stand-ins for the pretrained parts the xl profile loads: tiny, random, seeded, laid out as users
download them.

None of the real weights (SD1.5 and SDXL VAEs, T5-XXL, PixArt-alpha, the FID Inception, CLIP ViT-L/14, the
recaptioning VLM)
can be fetched where CI runs, yet the xl DAG is only rehearsed if every xl loader runs unchanged. So each
stand-in keeps the real part's file names, format and structure (down to the key layouts the loaders
check strictly) and shrinks only its widths; the numbers it produces mean nothing. The same seed gives
the same bytes, so a DVC cache keyed on them stays valid across machines.
"""

from __future__ import annotations

import os
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixart import atomic
from pixart.models.specs import ModelSpec, get_spec

# File names as xl's params.yaml expects them under pretrained/.
SD_VAE = "sd-vae-ft-ema"
SDXL_VAE = "sdxl-vae"
T5 = "t5-v1_1-xxl"
PIXART_ALPHA = "PixArt-XL-2-256x256.pth"
INCEPTION = "pt_inception-2015-12-05.pth"
CLIP = "clip-vit-large-patch14"
VLM = "llava-1.5-7b-hf"

# The real VAEs' structure (4 blocks: 8x downsampling, 4 latent channels, attention in the mid block)
# at a width a 2-core CPU encodes 256 px images with in milliseconds.
_VAE_BASE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "act_fn": "silu",
    "mid_block_add_attention": True,
}
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    SD_VAE: {**_VAE_BASE, "sample_size": 256, "scaling_factor": 0.18215},
    SDXL_VAE: {**_VAE_BASE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
}

# PixArt-alpha's 256 px checkpoint: 256 px / VAE x8, trained with pe_interpolation 1.0 and 120 tokens.
_ALPHA_LATENT_SIDE = 32
_ALPHA_PE_INTERPOLATION = 1.0
_ALPHA_TOKENS = 120

# A fixed English vocabulary for the stand-in tokenizers: captions made of these words tokenize into
# whole words, anything else into pieces or unk. Changing it changes the stand-ins' bytes.
_WORD_TEXT = """
a an the and or of in on at with without under over above below beside behind near next to from into
by for through around between across along against inside outside up down left right top bottom front
back middle center is are sitting standing walking running flying swimming holding looking wearing
playing eating drinking reading riding lying smiling covered made filled surrounded one two three four
five six seven eight nine ten many some several red orange yellow green blue purple pink brown black
white gray grey gold silver small large big tiny huge little tall short long wide narrow old young new
bright dark light soft shiny wooden metal glass stone round square flat empty full wet dry hot cold warm
beautiful cute happy sad calm sunny cloudy rainy snowy foggy colorful detailed realistic abstract vintage
modern ancient man woman boy girl child baby person people family friend crowd face hand hair eye dog
cat bird horse cow sheep fish bear lion tiger elephant rabbit mouse duck tree flower grass leaf forest
garden park field mountain hill river lake sea ocean beach sand rock sky cloud sun moon star rain snow
water fire city town street road bridge building house home room window door wall floor roof table chair
bed sofa lamp book cup bowl plate bottle food bread cake apple fruit car bus train boat ship plane
bicycle truck shirt dress hat shoe bag ball clock phone computer picture painting photo photograph image
illustration portrait landscape scene view background night day morning evening sunset sunrise winter
summer spring autumn circle triangle shape object
"""
WORDS = tuple(dict.fromkeys(_WORD_TEXT.split()))


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save a plain dict of tensors (what pytorch-fid ships), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_vae(out: str | Path, name: str = SDXL_VAE, *, seed: int = 0) -> Path:
    """A random diffusers ``AutoencoderKL`` folder shaped like ``name`` (``sd-vae-ft-ema`` or ``sdxl-vae``)."""
    from pixart.models.builders import build_vae

    out = Path(out)
    with atomic.folder(out) as tmp:
        build_vae(VAE_CONFIGS[name], seed=seed).save_pretrained(tmp, safe_serialization=True)
    return out


def _training_lines() -> list[str]:
    # Each word in ten lines of ten, in rotated orders: SentencePiece keeps a word whole only when it is
    # frequent (seen once, "small" became s + ma + ll). Plus the printable ASCII characters, so that any
    # English caption's letters, digits and punctuation have pieces of their own instead of unk.
    n = len(WORDS)
    lines = [
        " ".join(WORDS[(i + 7 * k) % n] for i in range(j, j + 10)) for k in range(10) for j in range(0, n, 10)
    ]
    printable = " ".join(chr(c) for c in range(33, 127))
    return lines + [printable] * 4


def write_t5(out: str | Path, *, d_model: int, seed: int = 0, vocab_size: int = 512) -> Path:
    """A flat T5 folder as ``google/t5-v1_1-xxl`` is downloaded: a random ``T5EncoderModel`` of width
    ``d_model`` (= the transformer's caption_channels) and its tokenizer files side by side."""
    from transformers import T5Config, T5EncoderModel

    from pixart.models.builders import train_tokenizer

    out = Path(out)
    with atomic.folder(out) as tmp:
        tokenizer = train_tokenizer(_training_lines(), tmp, vocab_size)
        # transformers 5 no longer writes this file but still reads it, and the downloaded folder has it
        atomic.write_json(tmp / "special_tokens_map.json", tokenizer.special_tokens_map)
        # T5 v1.1 (gated GELU, untied embeddings, 32 relative-position buckets) at 2 layers
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            num_heads=4,
            d_ff=2 * d_model,
            num_layers=2,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = T5EncoderModel(config)
        encoder.save_pretrained(tmp, safe_serialization=True)
    return out


def write_pixart_alpha(out: str | Path, spec: str | ModelSpec = "xl-rehearsal", *, seed: int = 0) -> Path:
    """An official-format PixArt-alpha 256 px ``.pth`` (``{"state_dict": ...}``, no KV compression) of a
    random transformer of ``spec``, written by the same converter that reads it back."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    from safetensors.torch import save_file

    from pixart.models.convert import EXTRAS_FILE, to_official
    from pixart.models.transformer import build_transformer

    spec = get_spec(spec) if isinstance(spec, str) else spec
    out = Path(out)
    grid = _ALPHA_LATENT_SIDE // spec.patch_size
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_transformer(
            spec, sample_size=_ALPHA_LATENT_SIDE, interpolation_scale=_ALPHA_PE_INTERPOLATION
        )
        # The tensors a real alpha checkpoint carries that our model recomputes or replaces: the fixed
        # PE of its 256 px grid and the null-caption embedding, initialised as the official code does.
        extras = {
            "pos_embed": get_2d_sincos_pos_embed(spec.hidden_size, grid, base_size=grid, output_type="pt")
            .float()
            .unsqueeze(0),
            "y_embedder.y_embedding": torch.randn(_ALPHA_TOKENS, spec.caption_channels)
            / spec.caption_channels**0.5,
        }
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in extras.items()}, str(Path(tmp) / EXTRAS_FILE))
        to_official(tmp, out)
    return out


def write_inception(out: str | Path, *, seed: int = 0) -> Path:
    """pytorch-fid's ``pt_inception-2015-12-05`` layout, full size (fixed by the architecture), random.

    He-normal convolutions under identity BatchNorm stats (mean 0, var 1) keep activations of order one
    through the 90-odd layers, so FID sees spread-out features rather than zeros or overflow."""
    from pixart.eval.inception import FIDInceptionV3

    generator = torch.Generator().manual_seed(seed)
    network = FIDInceptionV3()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
                )
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / module.in_features**0.5
                )
                module.bias.zero_()
    out = Path(out)
    # a plain dict: what torch.load(weights_only=True) reads, without the module's _metadata attribute
    _save_tensors({k: v.clone() for k, v in network.state_dict().items()}, out)
    return out


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE as CLIP's: every byte and byte + ``</w>``, the merges of BPE trained on ``WORDS``
    until each is one token, then the start/end tokens last (as CLIP's ids 49406, 49407)."""
    from collections import Counter

    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    words = [[*w[:-1], w[-1] + "</w>"] for w in WORDS]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in words for pair in pairwise(symbols))
        if not counts:
            break
        # most frequent pair, ties by the pair itself: no dependence on dict order
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        words = [_merge(symbols, best) for symbols in words]
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def write_clip(out: str | Path, *, seed: int = 0) -> Path:
    """A random ``CLIPModel`` + ``CLIPProcessor`` folder shaped like ``openai/clip-vit-large-patch14``:
    its 224 px / patch-14 input, 77 text positions and image processor, at a width of a few dozen."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab, merges = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        # wider than the text tower, as ViT-L (1024) is than CLIP's text model (768)
        vision_config={
            "image_size": 224,
            "patch_size": 14,
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    out = Path(out)
    with atomic.folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        # the Pil processor: the fast one needs torchvision, which does not import beside this torch
        CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer).save_pretrained(tmp)
    return out


# a chat template of the LLaVA-1.5 kind: one user turn with the image, then the assistant's
_VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<image>{{ '\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "ASSISTANT:{% endif %}"
)


def write_vlm(out: str | Path, *, seed: int = 0) -> Path:
    """A random ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder shaped like
    ``llava-hf/llava-1.5-7b-hf`` (a CLIP vision tower, a Llama decoder, ``<image>`` expanded into the
    patch tokens by the processor, a chat template), at 56 px and a width of 32. Its captions are
    random words; what it tests is the path a user's VLM takes."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vocab, merges = _clip_vocab()
    vocab = {**vocab, "<image>": len(vocab), "<pad>": len(vocab) + 1}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=512, pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 56, "patch_size": 14, "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "projection_dim": 16},
        text_config={"model_type": "llama", "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                     "max_position_embeddings": 512, "bos_token_id": vocab["<|startoftext|>"],
                     "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<pad>"]},
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        chat_template=_VLM_CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    out = Path(out)
    with atomic.folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out


def write_stand_ins(
    out_dir: str | Path, *, spec: str = "xl-rehearsal", caption_channels: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Every pretrained part of xl under ``out_dir`` with xl's file names; returns name -> path.

    ``caption_channels`` (the T5 width) defaults to the spec's and must equal it: the checkpoint's
    caption projection reads the T5's features."""
    model_spec = get_spec(spec)
    if caption_channels is None:
        caption_channels = model_spec.caption_channels
    if caption_channels != model_spec.caption_channels:
        raise ValueError(
            f"caption_channels {caption_channels} != spec {spec!r}'s caption_channels "
            f"{model_spec.caption_channels}: its checkpoint could not read the stand-in T5's features"
        )
    out_dir = Path(out_dir)
    # one seed per part, so that the two VAEs of one structure still differ
    return {
        SD_VAE: write_vae(out_dir / SD_VAE, SD_VAE, seed=seed),
        SDXL_VAE: write_vae(out_dir / SDXL_VAE, SDXL_VAE, seed=seed + 1),
        T5: write_t5(out_dir / T5, d_model=caption_channels, seed=seed + 2),
        PIXART_ALPHA: write_pixart_alpha(out_dir / PIXART_ALPHA, model_spec, seed=seed + 3),
        INCEPTION: write_inception(out_dir / INCEPTION, seed=seed + 4),
        CLIP: write_clip(out_dir / CLIP, seed=seed + 5),
        VLM: write_vlm(out_dir / VLM, seed=seed + 6),
    }
