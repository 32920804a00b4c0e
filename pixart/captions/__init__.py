"""Recaptioning, the paper's Share-Captioner step: dense captions written from the images themselves.

``store`` keeps them keyed by image content, ``recaption`` walks a dataset (sharded over ranks,
resumable), ``vlm`` (xl) and ``scene_reader`` (tiny) write them, ``audit`` measures them against the
truth where it is known, and ``panels`` shows a few side by side.
"""
