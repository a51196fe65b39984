"""Generation helper and dose-response sweeps (resumable JSONL) on a tiny random Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steering.datasets import self_report_prompts
from steering.evals.sentiment import evaluate_sentiment, vader
from steering.generate import (
    RowGumbelSampler,
    Steering,
    batch_groups,
    generate_responses,
    generate_steered_responses,
    render_prompts,
)
from steering.operators import ablate
from steering.sweep import SweepConfig, SweepFileError, load_records, plan_cells, prepare_vectors, run_sweep

D = 32


@pytest.fixture(scope="module")
def small_llama():
    from probes.models import tiny_model

    return tiny_model("llama", seed=0, n_layers=2, d_model=D)


# ----------------------------------------------------------------------------------------------------------
# generate_responses


def test_generate_is_seeded_and_shaped(small_llama) -> None:
    model, tok = small_llama
    prompts = ["How are you feeling right now?", "Hi"]
    kwargs = dict(max_new_tokens=5, temperature=1.0, n_samples=3, seed=7, batch_size=4)
    state = torch.random.get_rng_state()
    first = generate_responses(model, tok, prompts, **kwargs)
    assert torch.equal(state, torch.random.get_rng_state()), "the caller's RNG must be left untouched"
    assert [len(r) for r in first] == [3, 3]
    assert first == generate_responses(model, tok, prompts, **kwargs)
    assert first != generate_responses(model, tok, prompts, **{**kwargs, "seed": 8})


def test_greedy_generation_is_batch_invariant_and_replicated(small_llama) -> None:
    model, tok = small_llama
    prompts = ["How are you feeling right now?", "Hi", "What comes to mind when you see a receipt?"]
    one = generate_responses(model, tok, prompts, max_new_tokens=6, batch_size=1)
    three = generate_responses(model, tok, prompts, max_new_tokens=6, batch_size=3, n_samples=2)
    assert [r[0] for r in one] == [r[0] for r in three]
    assert all(r[0] == r[1] for r in three)


def test_generate_with_steering(small_llama) -> None:
    model, tok = small_llama
    prompts = ["Are you happy?"]
    plain = generate_responses(model, tok, prompts, max_new_tokens=6)
    v = torch.randn(D) * 6
    zero = generate_responses(
        model, tok, prompts, max_new_tokens=6, steering=Steering(v, layers=[1], alpha=0.0)
    )
    steered = generate_responses(
        model, tok, prompts, max_new_tokens=6, steering=Steering(v, layers=[1], alpha=4.0)
    )
    assert zero == plain
    assert steered != plain


def test_row_gumbel_sampler_draws_from_the_softmax() -> None:
    # argmax(logits / T + Gumbel) is a draw from softmax(logits / T): frequencies over 20,000 row seeds
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    temperature = 0.7
    n = 20_000
    sampler = RowGumbelSampler(range(n), temperature=temperature)
    picks = sampler(None, logits.expand(n, 4)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    expected = torch.softmax(logits / temperature, -1)
    assert torch.allclose(freq, expected, atol=4 * math.sqrt(0.25 / n))  # 4 binomial SE at most
    # a row's draws depend on its seed alone, not on the rows beside it
    alone = RowGumbelSampler([5], temperature=1.0)(None, torch.zeros(1, 7))
    beside = RowGumbelSampler([9, 5], temperature=1.0)(None, torch.zeros(2, 7))
    assert torch.equal(alone[0], beside[1])
    with pytest.raises(ValueError, match="2 row seeds but the batch has 1 rows"):
        RowGumbelSampler([1, 2], temperature=1.0)(None, torch.zeros(1, 7))


def test_sampled_generation_does_not_depend_on_the_batch(small_llama) -> None:
    model, tok = small_llama
    prompts = ["How are you feeling right now?", "Hi", "What comes to mind when you see a receipt?"]
    kwargs = dict(max_new_tokens=6, temperature=1.0, n_samples=2, seed=3)
    assert generate_responses(model, tok, prompts, batch_size=1, **kwargs) == generate_responses(
        model, tok, prompts, batch_size=6, **kwargs
    )


def test_steerings_in_one_batch_equal_each_steering_alone(small_llama) -> None:
    model, tok = small_llama
    prompts = ["How are you feeling right now?", "Hi", "What comes to mind when you see a receipt?"]
    g = torch.Generator().manual_seed(5)
    v, w = torch.randn(D, generator=g) * 6, torch.randn(D, generator=g) * 6
    steerings = [
        None,
        Steering({1: v}, layers=[1], alpha=4.0),
        Steering({0: w}, layers=[0], alpha=-2.0),
        Steering({1: v}, layers=[1], alpha=-4.0),
    ]
    kwargs = dict(max_new_tokens=6, temperature=1.0, n_samples=2, seed=3)
    together = generate_steered_responses(model, tok, prompts, steerings, batch_size=5, **kwargs)
    alone = [generate_responses(model, tok, prompts, steering=s, batch_size=4, **kwargs) for s in steerings]
    assert together == alone
    assert together[1] != together[0]  # the steering changes the texts
    # distinct steerings share batches only when additive under one string position rule; others run in their own
    ablation = Steering({1: v}, layers=[1], alpha=2.0, operator=ablate())
    everywhere = Steering({1: v}, layers=[1], alpha=4.0, positions="all")
    mask = torch.zeros(2, 40, dtype=torch.bool)
    masked = Steering({1: v}, layers=[1], alpha=4.0, positions=mask)
    mixed = [steerings[1], ablation, None, everywhere, steerings[2], ablation, masked]
    assert batch_groups(mixed) == [[0, 2, 4], [1, 5], [3], [6]]
    assert batch_groups([ablation, None]) == [[1], [0]]
    assert batch_groups([None, None]) == [[0, 1]]
    together = generate_steered_responses(model, tok, prompts, mixed[:6], batch_size=5, **kwargs)
    alone = [generate_responses(model, tok, prompts, steering=s, batch_size=4, **kwargs) for s in mixed[:6]]
    assert together == alone
    assert together[0] != together[2] and together[1] != together[2]  # steered, ablated ≠ unsteered
    with pytest.raises(ValueError, match="steerings is empty"):
        generate_steered_responses(model, tok, prompts, [])


def test_render_prompts_and_bad_arguments(small_llama) -> None:
    model, tok = small_llama
    text = render_prompts(tok, ["Hi"], system="Be brief.")[0]
    assert "Be brief." in text and text.endswith("assistant\n")
    with pytest.raises(TypeError, match="list of prompts"):
        render_prompts(tok, "Hi")
    with pytest.raises(ValueError, match="temperature"):
        generate_responses(model, tok, ["Hi"], temperature=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        generate_responses(model, tok, ["Hi"], n_samples=0)


# ----------------------------------------------------------------------------------------------------------
# Sweeps


def _config(**changes) -> SweepConfig:
    base = dict(
        alphas=(-2.0, 0.0, 2.0),
        layers=(1,),
        evals=("sentiment", "confidence"),
        n_prompts=2,
        n_samples=2,
        max_new_tokens=4,
        temperature=1.0,
        norm_match_to="v",
    )
    return SweepConfig(**{**base, **changes})


def _vectors() -> dict[str, dict[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    return {"v": {1: torch.randn(D, generator=g) * 3}, "u": {1: torch.randn(D, generator=g) * 0.5}}


def test_plan_shares_the_alpha_zero_baseline() -> None:
    vectors = {"v": {1: torch.ones(D)}, "u": {1: torch.ones(D)}}
    cells = plan_cells(vectors, _config(seeds=(0, 1)))
    sentiment = [c for c in cells if c.eval == "sentiment"]
    assert len(sentiment) == 2 * (1 + 2 * 2)  # seeds × (baseline + alphas ±2 × vectors)
    assert [c for c in sentiment if c.alpha == 0] == [c for c in sentiment if c.vector is None]
    assert len([c for c in cells if c.eval == "confidence"]) == 5  # one seed only: deterministic
    ablation = plan_cells(vectors, _config(operator="ablate"))
    assert all(c.vector is not None for c in ablation)


def test_prepare_vectors_norm_matches_controls(small_llama) -> None:
    model, _ = small_llama
    prepared = prepare_vectors(model, _vectors(), _config())
    assert prepared["u"][1].norm() == pytest.approx(float(prepared["v"][1].norm()), rel=1e-6)
    direction = _vectors()["u"][1]
    cosine = torch.nn.functional.cosine_similarity(prepared["u"][1], direction, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(KeyError, match="norm_match_to='w'"):
        prepare_vectors(model, _vectors(), _config(norm_match_to="w"))
    with pytest.raises(KeyError, match="no direction at layers"):
        prepare_vectors(model, _vectors(), _config(layers=(0,)))
    with pytest.raises(IndexError, match="valid layers"):
        prepare_vectors(model, {"v": torch.ones(D)}, _config(layers=(5,)))


def test_sweep_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown evals"):
        SweepConfig(evals=("mood",))
    with pytest.raises(ValueError, match="finite"):
        SweepConfig(alphas=(0.0, float("inf")))
    with pytest.raises(ValueError, match="unknown position rule"):
        SweepConfig(positions="prompt")
    with pytest.raises(ValueError, match="operator"):
        SweepConfig(operator="clamp")


def test_sweep_writes_cells_and_resumes(small_llama, tmp_path) -> None:
    model, tok = small_llama
    out = tmp_path / "sweep.jsonl"
    config = _config()
    seen: list[dict] = []
    records = run_sweep(model, tok, _vectors(), config, out, on_cell=seen.append)
    assert len(records) == len(seen) == 10  # 2 evals × (baseline + 2 alphas × 2 vectors)
    assert len(out.read_text().splitlines()) == 10
    baseline = next(r for r in records if r["eval"] == "sentiment" and r["vector"] is None)
    assert baseline["alpha"] == 0.0 and baseline["n"] == 4 and len(baseline["rows"]) == 4
    # the stored baseline is the plain unsteered eval
    direct = evaluate_sentiment(
        model, tok, self_report_prompts(n=2, seed=0), n_samples=2, max_new_tokens=4, temperature=1.0, seed=0
    )
    assert baseline["values"] == direct.column("score")
    # a steered cell, generated in one batch with the others, equals its evaluation on its own
    cell = next(r for r in records if r["eval"] == "sentiment" and r["vector"] == "v" and r["alpha"] == 2.0)
    steered = evaluate_sentiment(
        model,
        tok,
        self_report_prompts(n=2, seed=0),
        n_samples=2,
        max_new_tokens=4,
        temperature=1.0,
        seed=0,
        steering=Steering({1: _vectors()["v"][1]}, layers=[1], alpha=2.0),
    )
    assert cell["values"] == steered.column("score") and cell["cells_batched"] == 5
    assert [row["response"] for row in cell["rows"]] == steered.column("response")
    # norm-matched control: same push as v
    pushes = {
        (r["vector"], r["alpha"]): r["push"] for r in records if r["eval"] == "sentiment" and r["vector"]
    }
    assert pushes[("u", 2.0)] == pytest.approx(pushes[("v", 2.0)], rel=1e-6)
    assert all(0.0 <= v <= 1.0 for r in records if r["eval"] == "confidence" for v in r["values"])
    # rerun: nothing recomputed, same file
    before = out.read_text()
    again: list[dict] = []
    assert run_sweep(model, tok, _vectors(), config, out, on_cell=again.append) == records
    assert again == [] and out.read_text() == before


def test_an_ablation_sweep_cell_equals_its_own_evaluation(small_llama, tmp_path) -> None:
    model, tok = small_llama
    config = _config(evals=("sentiment",), operator="ablate", alphas=(0.0, 2.0), norm_match_to=None)
    records = run_sweep(model, tok, _vectors(), config, tmp_path / "ablate.jsonl")
    assert len(records) == 4  # no shared baseline: ablation at α = 0 is not the unsteered model
    cell = next(r for r in records if r["vector"] == "v" and r["alpha"] == 2.0)
    alone = evaluate_sentiment(
        model, tok, self_report_prompts(n=2, seed=0), n_samples=2, max_new_tokens=4, temperature=1.0, seed=0,
        steering=Steering({1: _vectors()["v"][1]}, layers=[1], alpha=2.0, operator=ablate()),
    )  # fmt: skip
    assert [row["response"] for row in cell["rows"]] == alone.column("response")


def test_sweep_keeps_partial_results_on_error_and_resumes(small_llama, tmp_path) -> None:
    model, tok = small_llama
    out = tmp_path / "partial.jsonl"
    config = _config(evals=("sentiment",))
    calls = {"n": 0}

    def flaky(prompts, responses):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("judge went away")
        return vader()(prompts, responses)

    flaky.__name__ = "vader"
    with pytest.raises(ConnectionError, match="went away"):
        run_sweep(model, tok, _vectors(), config, out, scorer=flaky)
    assert len(load_records(out)) == 2
    resumed: list[dict] = []
    records = run_sweep(model, tok, _vectors(), config, out, on_cell=resumed.append)
    assert len(resumed) == 3 and len(records) == 5
    keys = [r["key"] for r in records]
    assert len(set(keys)) == len(keys)
    # the resumed sweep equals an uninterrupted one
    fresh = run_sweep(model, tok, _vectors(), config, tmp_path / "fresh.jsonl")
    by_key = {r["key"]: r["values"] for r in fresh}
    assert all(by_key[r["key"]] == r["values"] for r in records)


def test_sweep_refuses_a_foreign_results_file(small_llama, tmp_path) -> None:
    model, tok = small_llama
    out = tmp_path / "s.jsonl"
    config = _config(evals=("confidence",))
    run_sweep(model, tok, _vectors(), config, out)
    with pytest.raises(SweepFileError, match="different sweep configuration"):
        run_sweep(model, tok, _vectors(), _config(evals=("confidence",), alphas=(-4.0, 0.0, 4.0)), out)
    other = _vectors()
    other["v"] = {1: torch.ones(D)}
    with pytest.raises(SweepFileError, match="different vector named 'v'"):
        run_sweep(model, tok, other, config, out)
    out.write_text(out.read_text() + "{broken\n")
    with pytest.raises(SweepFileError, match="not valid JSON"):
        load_records(out)
    assert json.loads(out.read_text().splitlines()[0])["eval"] == "confidence"


# ----------------------------------------------------------------------------------------------------------
# Positive control on the real bundled SmolLM2-135M-Instruct (tiny version of steering.positive_control)


@pytest.mark.slow
def test_positive_control_sentiment_vector_moves_vader_sentiment(tmp_path) -> None:
    from probes.models import load_model
    from steering.positive_control import PositiveControlConfig, run_positive_control

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    config = PositiveControlConfig(
        alphas=(-4.0, 0.0, 4.0),
        n_prompts=10,
        n_samples=1,
        max_new_tokens=24,
        n_boot=200,
        batch_size=10,
        out_dir=tmp_path,
    )
    result = run_positive_control(model, tok, config)
    means = {(c.vector, c.alpha): c.mean for c in result.cells}
    assert means[("v", 4.0)] > means[("v", 0.0)] > means[("v", -4.0)]
    slopes = {s.vector: s for s in result.slopes}
    assert slopes["v"].slope > 0 and slopes["v"].excludes_zero
    assert abs(slopes["random"].slope) < slopes["v"].slope
    assert result.vector_norm == pytest.approx(
        float(torch.linalg.vector_norm(torch.zeros(1))) + result.raw_norm
    )
    assert (tmp_path / "sweep.jsonl").exists() and (tmp_path / "summary.json").exists()
    reliability = {r.vector: r for r in result.reliability}
    assert set(reliability) == {"v", "random"} and reliability["v"].n_prompts == 10
    assert reliability["v"].expected_sign == reliability["random"].expected_sign == 1
    assert reliability["v"].anti_steerable < 0.5  # most prompts move the way the pooled slope says
    assert "anti-steerable share" in result.markdown()
