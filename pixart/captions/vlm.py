"""xl's recaptioner: any transformers image-text-to-text model from a local folder.

The model class comes from the folder's config, as ``AutoModelForImageTextToText`` resolves it (LLaVA,
Qwen2-VL, Idefics, ...), the prompt from its processor's chat template: one user turn holding the
image and the instruction. Captions are greedy (the same image gets the same caption on every run and
rank) and cut at ``max_new_tokens``; rows are left-padded, so that every row of a batch continues
from its own last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from pixart.models.builders import precision_dtype


class VLMCaptioner:
    def __init__(self, path: Path, *, instruction: str, max_new_tokens: int, precision: str = "fp32",
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"recaption.model_path: {path} is not a transformers model folder (no config.json)")
        self.processor = AutoProcessor.from_pretrained(path)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"recaption.model_path: the processor in {path} has no chat template, so there is no "
                             "prompt format to put the instruction in; use a chat (instruction-tuned) VLM")
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=precision_dtype(precision))
        self.model = self.model.to(device).eval()
        self.max_new_tokens = max_new_tokens
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        self.prompt = self.processor.apply_chat_template(turn, add_generation_prompt=True)

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(images=list(images), text=[self.prompt] * len(images), return_tensors="pt",
                                padding=True).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]
