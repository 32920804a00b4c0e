"""A resumable checkpoint that changed on disk after its save (truncated, same-size tampering, an added
file) is refused before DeepSpeed's loader unpickles anything, naming the file."""

from __future__ import annotations

import pytest
from deepspeed.runtime.engine import DeepSpeedEngine

from pixart.train.checkpoint import ResumableState, ResumeError, step_tag
from pixart.train.trainer import train
from tests.faults import harness


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_changed_checkpoint_is_refused_by_name_before_deepspeed_unpickles_it(embedded, record, monkeypatch):
    root = embedded
    harness.world(root)
    job = harness.stage_job(root)
    train(job)
    tag_dir = ResumableState(job.state_dir).dir / step_tag(harness.STEPS)
    model_states = next(tag_dir.glob("*model_states.pt"))

    def unpickle(*args, **kwargs):
        raise AssertionError("DeepSpeed's load_checkpoint ran on a checkpoint that does not match its manifest")

    monkeypatch.setattr(DeepSpeedEngine, "load_checkpoint", unpickle)
    pristine = model_states.read_bytes()
    before, after = {}, {}  # around each refused resume, keyed by the change
    for change, target, expect in [(_truncate, model_states, "bytes, the manifest says"),
                                   (_flip_last_byte, model_states, "sha256"),
                                   (lambda p: p.write_bytes(b"\x80\x04N."), tag_dir / "extra.pt", "not written by this run")]:
        change(target)
        before.update({f"{change.__name__}:{k}": v for k, v in harness.kept(job).items()})
        with pytest.raises(ResumeError, match=expect) as refused:
            train(job)
        assert str(refused.value).startswith(f"{target}:")
        after.update({f"{change.__name__}:{k}": v for k, v in harness.kept(job).items()})
        model_states.write_bytes(pristine)
        (tag_dir / "extra.pt").unlink(missing_ok=True)
    assert after == before
    record("checkpoint changed on disk (truncated, tampered, added file)", "resume refused, file named, not loaded",
           before, after)
