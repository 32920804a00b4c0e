"""Seconds per batch of text features padded to max_tokens (what the pipeline does) vs to the batch's
longest caption (what the feature cache stores), same encoder and captions, and the largest
difference on real tokens.

    python bench/text_features.py [--images 256 --batch 16]

Encoder: the tiny profile's packaged MiniLM-L6. Captions: a generated dataset's dense captions at
300 tokens (the align and aesthetic stages) and raw captions at 120 (base, vae-adapt).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pixart.config import load_profile
from pixart.data.format import load_dataset
from pixart.data.generate import generate_dataset
from pixart.models.builders import encode_captions, packaged_text_encoder


@torch.inference_mode()
def encode_all(encoder, tokenizer, captions: list[str], max_tokens: int, batch: int, pad_to_max: bool):
    """Seconds per batch and the real tokens' features of every caption."""
    features = []
    start = time.perf_counter()
    for first in range(0, len(captions), batch):
        text, mask = encode_captions(encoder, tokenizer, captions[first:first + batch], max_tokens,
                                     pad_to_max=pad_to_max)
        features += [t[m.bool()] for t, m in zip(text, mask, strict=True)]
    return (time.perf_counter() - start) / -(-len(captions) // batch), features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    encoder, tokenizer = packaged_text_encoder(load_profile("tiny")[1].text_encoder.package)
    encoder.eval()
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "data", n=args.images, seed=0, resolution_px=32)
        entries = load_dataset(Path(tmp) / "data")
    print(f"{args.images} captions, batch {args.batch}, threads {torch.get_num_threads()}")
    for kind, max_tokens in (("dense", 300), ("raw", 120)):
        captions = [e.caption(kind) for e in entries]
        lengths = [len(tokenizer(c, truncation=True, max_length=max_tokens).input_ids) for c in captions]
        full_s, full = encode_all(encoder, tokenizer, captions, max_tokens, args.batch, pad_to_max=True)
        short_s, short = encode_all(encoder, tokenizer, captions, max_tokens, args.batch, pad_to_max=False)
        diff = max(float((a - b).abs().max()) for a, b in zip(full, short, strict=True))
        print(f"{kind:>5} @ {max_tokens} tokens (real: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}): "
              f"pad to max {full_s:.3f} s/batch, pad to longest {short_s:.3f} s/batch, "
              f"{full_s / short_s:.1f}x; max |diff| on real tokens {diff:.2e}")


if __name__ == "__main__":
    main()
