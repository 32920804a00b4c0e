"""`pixart plan-memory` / `pixart ds-config`: the per-GPU memory estimate and the xl DeepSpeed config."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from pixart.cli import plan
from pixart.config import load_profile
from pixart.models.specs import get_spec
from pixart.models.transformer import build_transformer
from pixart.train import memory
from pixart.train.ds_config import deepspeed_config

GB = 1e9


@pytest.fixture(scope="module")
def xl_params() -> int:
    return memory.count_parameters(get_spec("xl"))


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    plan.register(app)
    return app


def test_xl_transformer_has_the_papers_0_6_billion_parameters(xl_params):
    assert 0.60e9 < xl_params < 0.62e9


def test_token_count_is_latent_side_over_patch_squared():
    assert [memory.token_count(r, 2) for r in (1024, 2048, 4096)] == [4096, 16384, 65536]
    with pytest.raises(ValueError, match="resolution: 1000 px"):
        memory.token_count(1000, 2)


def test_model_states_match_the_zero_papers_7_5b_example():
    # ZeRO (Rajbhandari et al. 2020), Figure 1: Psi = 7.5 B, N_d = 64, K = 12 (mixed precision Adam).
    totals = [sum(memory.model_state_bytes(7_500_000_000, z, 64, "bf16")) / GB for z in (0, 1, 2, 3)]
    assert [round(t, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]


@pytest.mark.parametrize("num_gpus", [2, 8])
def test_each_zero_stage_holds_less_per_gpu_than_the_previous(xl_params, num_gpus):
    spec = get_spec("xl")
    totals = [
        memory.estimate(spec, 1024, z, num_gpus=num_gpus, n_params=xl_params).total for z in (0, 1, 2, 3)
    ]
    assert totals[3] < totals[2] < totals[1] < totals[0]


def test_zero_stages_are_equal_on_one_gpu(xl_params):
    totals = {memory.estimate(get_spec("xl"), 1024, z, n_params=xl_params).total for z in (0, 1, 2, 3)}
    assert len(totals) == 1


def test_activations_grow_with_tokens_and_batch_and_shrink_with_checkpointing(xl_params):
    spec = get_spec("xl")

    def act(resolution: int, batch: int = 1, checkpointing: bool = True) -> int:
        return memory.estimate(
            spec, resolution, 2, micro_batch=batch, grad_checkpointing=checkpointing, n_params=xl_params
        ).activations

    a1k, a2k, a4k = act(1024), act(2048), act(4096)
    assert a1k < a2k < a4k
    # linear in tokens (no stored attention matrix) up to the fixed text term: 4x tokens, ~4x memory
    assert 3.9 < a2k / a1k <= 4 and 3.9 < a4k / a2k <= 4
    assert act(1024, batch=4) == 4 * a1k
    assert act(1024, checkpointing=False) > 10 * a1k
    # model states do not depend on the resolution
    assert memory.estimate(spec, 1024, 2, n_params=xl_params).params == memory.estimate(
        spec, 4096, 2, n_params=xl_params
    ).params


def test_block_activation_count_matches_what_autograd_saves_in_a_real_block():
    spec = get_spec("tiny")
    model = build_transformer(spec, sample_size=32, interpolation_scale=1.0)
    block = model.transformer_blocks[0]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    batch, tokens, text_tokens, h = 2, 256, 300, spec.hidden_size
    x = torch.randn(batch, tokens, h, requires_grad=True)
    text = torch.randn(batch, text_tokens, h)
    saved: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # weights are model states, not activations
            saved[storage.data_ptr(), storage.nbytes()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, encoder_hidden_states=text, timestep=torch.randn(batch, 6 * h))
    measured = sum(saved.values()) / batch
    expected = memory.block_activation_elements(h, tokens, text_tokens)
    assert abs(measured - expected) / expected < 0.03, (measured, expected)


def test_plan_memory_prints_the_three_paper_resolutions(cli):
    result = CliRunner().invoke(cli, ["plan-memory", "--spec", "xl", "--zero-stage", "2", "--num-gpus", "8"])
    assert result.exit_code == 0, result.output
    for text in ("1024 px", "2048 px", "4096 px", "65536", "optimizer states", "activations", "610.9 M params"):
        assert text in result.output


def test_plan_memory_rejects_an_unknown_spec(cli):
    result = CliRunner().invoke(cli, ["plan-memory", "--spec", "xxl"])
    assert result.exit_code != 0
    assert "unknown model spec 'xxl'" in result.output


def test_ds_config_prints_the_trainers_config_for_the_xl_stage(cli):
    result = CliRunner().invoke(cli, ["ds-config", "--profile", "xl", "--stage", "aes-1024"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    _, xl = load_profile("xl")
    assert config == deepspeed_config(xl.train, 384, 8)
    assert config["zero_optimization"]["stage"] == 2 and config["bf16"]["enabled"] is True
    assert config["train_micro_batch_size_per_gpu"] == 48

    two_nodes = json.loads(
        CliRunner().invoke(cli, ["ds-config", "--profile", "xl", "--stage", "aes-1024", "--num-nodes", "2"]).output
    )
    assert two_nodes["train_micro_batch_size_per_gpu"] == 24


def test_ds_config_names_the_unknown_stage(cli):
    result = CliRunner().invoke(cli, ["ds-config", "--profile", "xl", "--stage", "aes-8k"])
    assert result.exit_code != 0
    assert "no stage 'aes-8k' in profile 'xl'" in result.output
