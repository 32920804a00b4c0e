"""CLIP-score against a hand computation of cosine similarity, with a tiny random CLIP on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixart.eval.clip_score import ClipScorer, clip_score


def _tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    # Byte-level BPE maps printable ASCII to itself; with no merges every word is spelled by letters.
    chars = [chr(c) for c in range(33, 127)]
    vocab = {
        t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 32,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder / "clip")
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder / "clip")
    return folder / "clip"


def test_clip_score_is_the_mean_clamped_cosine_of_projected_embeddings(tmp_path) -> None:
    path = _tiny_clip(tmp_path)
    scorer = ClipScorer(path)
    images = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "two blue squares", "a green triangle at the top", "black background"]

    inputs = scorer.processor(text=prompts, images=[(im * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                                                     for im in images], return_tensors="pt", padding=True)  # fmt: skip
    m = scorer.model
    with torch.no_grad():
        img = m.visual_projection(m.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        txt = m.text_projection(m.text_model(input_ids=inputs["input_ids"],
                                             attention_mask=inputs["attention_mask"]).pooler_output)  # fmt: skip
    cos = (img * txt).sum(-1) / (img.norm(dim=-1) * txt.norm(dim=-1))
    expected = cos.clamp(min=0)

    got = scorer.scores(images, prompts)
    assert torch.allclose(got, expected, atol=1e-5)
    assert clip_score(images, prompts, scorer, batch_size=3) == pytest.approx(
        float(expected.mean()), abs=1e-5
    )


def test_missing_clip_folder_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        ClipScorer(tmp_path / "nope")
