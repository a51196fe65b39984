"""probes.emotions and probes.sentiment: story means, emotion-minus-others, PC denoising, valence axis, axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.concept_vector import ConceptVector
from probes.emotions import (
    EmotionError,
    emotion_scatter,
    emotion_vectors,
    emotion_vectors_from_activations,
    load_emotion_stories,
    load_neutral_texts,
    neutral_components,
    ols,
    project_out,
    story_mean_activations,
    valence_axis,
)
from probes.models import tiny_model
from probes.plots import emotion_scatter_plot
from probes.sentiment import (
    SentimentError,
    axis_cosines,
    labelled_sentiment_axis,
    load_sentiment,
    normalise_label,
    prompt_sentiment_axis,
    sentiment_prompts,
)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=4, n_layers=2)


def _hidden(model, tok, text):
    encoded = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded, output_hidden_states=True).hidden_states


def test_emotion_minus_others_by_hand():
    g = torch.Generator().manual_seed(0)
    acts = {3: torch.randn(9, 6, generator=g, dtype=torch.float64)}
    labels = ["a", "a", "b", "b", "b", "c", "c", "c", "c"]
    ev = emotion_vectors_from_activations(acts, labels)
    x = acts[3]
    mine = torch.tensor([lab == "b" for lab in labels])
    assert ev.emotions == ("a", "b", "c")
    assert torch.allclose(ev.vectors[3][1], x[mine].mean(0) - x[~mine].mean(0))
    assert ev.n_components_removed == {3: 0}
    assert torch.equal(ev.vectors[3], ev.raw[3])


def test_neutral_components_pick_k_by_explained_variance():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    scales = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.5, 0.2, 0.1, 0.05], dtype=torch.float64)
    coefficients = torch.randn(400, 8, generator=g, dtype=torch.float64)
    coefficients = coefficients - coefficients.mean(0)
    coefficients = torch.linalg.qr(coefficients)[0] * 20  # orthogonal columns of equal norm
    neutral = (coefficients * scales) @ basis.T + 3.0
    ratios = scales**2 / (scales**2).sum()  # 0.69, 0.25, ...
    assert neutral_components(neutral, 0.5).shape[0] == 1
    assert neutral_components(neutral, 0.9).shape[0] == 2
    assert neutral_components(neutral, float(ratios[:3].sum()) - 1e-6).shape[0] == 3
    assert neutral_components(neutral, 0.0).shape[0] == 0
    top = neutral_components(neutral, 0.5)[0]
    assert abs(float(top @ basis[:, 0])) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(EmotionError):
        neutral_components(neutral, 1.0)


def test_denoising_projects_out_the_neutral_direction():
    g = torch.Generator().manual_seed(2)
    noise_dir = torch.zeros(5, dtype=torch.float64)
    noise_dir[0] = 1.0
    neutral = torch.randn(50, 1, generator=g, dtype=torch.float64) * 10 * noise_dir + 0.01 * torch.randn(
        50, 5, generator=g, dtype=torch.float64
    )
    acts = {0: torch.randn(6, 5, generator=g, dtype=torch.float64)}
    ev = emotion_vectors_from_activations(acts, ["x", "x", "y", "y", "z", "z"], neutral={0: neutral})
    assert ev.n_components_removed == {0: 1}
    component = neutral_components(neutral, 0.5)
    assert torch.allclose(ev.vectors[0], project_out(ev.raw[0], component))
    assert ev.vectors[0][:, 0].abs().max() < 1e-2 * ev.raw[0][:, 0].abs().max()


def test_valence_axis_recovers_a_planted_valence_direction():
    g = torch.Generator().manual_seed(3)
    d, n = 32, 20
    valence_dir = torch.randn(d, generator=g, dtype=torch.float64)
    valence_dir /= valence_dir.norm()
    arousal_dir = torch.randn(d, generator=g, dtype=torch.float64)
    arousal_dir -= (arousal_dir @ valence_dir) * valence_dir
    arousal_dir /= arousal_dir.norm()
    valence = np.linspace(-1, 1, n)
    arousal = np.random.default_rng(0).uniform(0, 1, n)
    vectors = (
        torch.as_tensor(valence)[:, None] * 5 * valence_dir
        + torch.as_tensor(arousal - arousal.mean())[:, None] * 2 * arousal_dir
        + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    )
    names = [f"e{i}" for i in range(n)]
    # one story per emotion equal to its vector: emotion-minus-others is an affine map of it
    ev = emotion_vectors_from_activations(
        {7: vectors}, names, valence=dict(zip(names, valence)), arousal=dict(zip(names, arousal))
    )
    axis = valence_axis(ev, 7)
    assert float(axis.pc1 @ valence_dir) > 0.999  # signed: positive valence projects higher
    assert axis.r_valence > 0.999 and axis.r_arousal > 0.99
    assert axis.explained[0] > axis.explained[1] > 0
    assert axis.as_vector().layers == [7]


def test_scatter_of_antiparallel_vectors_has_slope_minus_one():
    g = torch.Generator().manual_seed(4)
    acts = {2: torch.randn(12, 16, generator=g, dtype=torch.float64)}
    ev = emotion_vectors_from_activations(acts, [f"e{i // 2}" for i in range(12)])
    v = torch.randn(16, generator=g)
    v_mold = ConceptVector({2: v}, concept="Mold")
    v_gold = ConceptVector({2: -3.0 * v}, concept="Gold")
    scatter = emotion_scatter(ev, v_mold, v_gold, 2)
    assert scatter.slope == pytest.approx(-1.0) and scatter.r == pytest.approx(-1.0)
    assert scatter.intercept == pytest.approx(0.0, abs=1e-9)
    by_hand = [float(e @ v.double() / (e.norm() * v.double().norm())) for e in ev.vectors[2]]
    assert scatter.x == pytest.approx(by_hand)
    assert scatter.top("x", 1)[0][1] == pytest.approx(max(by_hand))
    fig = emotion_scatter_plot(scatter)
    assert len(fig.data) == 2


def test_ols_matches_numpy_polyfit():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=30), rng.normal(size=30)
    slope, intercept, r = ols(x, y)
    assert (slope, intercept) == pytest.approx(tuple(np.polyfit(x, y, 1)))
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    with pytest.raises(EmotionError, match="constant"):
        ols(np.ones(3), np.arange(3.0))


def test_story_means_match_hand_average_with_offset_and_short_fallback(llama):
    model, tok = llama
    texts = ["The kettle clicked off and the kitchen went quiet again.", "Hi there"]
    acts, n_short = story_mean_activations(model, tok, texts, [0, 1], token_offset=4, batch_size=2)
    assert n_short == 1  # "Hi there" has <= 4 tokens: all of its tokens are used
    long_hidden = _hidden(model, tok, texts[0])
    short_hidden = _hidden(model, tok, texts[1])
    assert torch.allclose(acts[0][0], long_hidden[1][0, 4:].mean(0), atol=1e-5)
    assert torch.allclose(acts[0][1], short_hidden[1][0].mean(0), atol=1e-5)


def test_emotion_vectors_end_to_end_on_shipped_data(llama):
    model, tok = llama
    stories = [s for s in load_emotion_stories() if s.emotion in {"happy", "afraid", "angry", "calm", "sad"}]
    emotions = {s.emotion for s in stories}
    assert len(emotions) >= 3, "expected several of the requested emotions in the shipped data"
    neutral = load_neutral_texts()[:12]
    ev = emotion_vectors(model, tok, [1], stories=stories, neutral_texts=neutral, batch_size=8)
    assert ev.vectors[1].shape == (len(emotions), 64)
    assert torch.isfinite(ev.vectors[1]).all()
    assert 1 <= ev.n_components_removed[1] <= 12
    assert np.isfinite(ev.valence).all()
    vector = ev.vector(ev.emotions[0])
    assert torch.allclose(vector[1].double(), ev.vectors[1][0].float().double())
    with pytest.raises(KeyError, match="unknown emotion"):
        ev.vector("bored-to-tears")


def test_prompt_sentiment_axis_is_last_token_difference(llama):
    model, tok = llama
    axis = prompt_sentiment_axis(model, tok, [0, 1])
    prompts = sentiment_prompts()
    assert prompts["positive"] == ["Describe a book using positive sentiment"]

    def last(prompt):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        encoded = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            return model(**encoded, output_hidden_states=True).hidden_states[1][0, -1]

    expected = last(prompts["positive"][0]) - last(prompts["negative"][0])
    assert torch.allclose(axis[0], expected, atol=1e-5)
    assert axis.n_per_class == {"positive": 1, "negative": 1}


def test_labelled_sentiment_axis_is_class_mean_difference(llama):
    model, tok = llama
    rows = [
        {"text": "A wonderful, warm and funny film.", "label": "positive"},
        {"text": "I loved every minute of it.", "label": 1},
        {"text": "A dull, cold and joyless film.", "label": "negative"},
        {"text": "I hated every minute of it.", "label": 0},
    ]
    axis = labelled_sentiment_axis(model, tok, [0], rows=rows, token_offset=1)
    means = [_hidden(model, tok, r["text"])[1][0, 1:].mean(0) for r in rows]  # block 0 output
    expected = (means[0] + means[1]) / 2 - (means[2] + means[3]) / 2
    assert torch.allclose(axis[0], expected, atol=1e-5)
    cosines = axis_cosines(axis, {"self": axis, "neg": -axis})
    assert cosines["self"][0] == pytest.approx(1.0) and cosines["neg"][0] == pytest.approx(-1.0)
    with pytest.raises(SentimentError, match="no negative"):
        labelled_sentiment_axis(model, tok, [1], rows=rows[:2])
    with pytest.raises(SentimentError, match="unknown sentiment label"):
        normalise_label("meh")


def test_shipped_sentiment_set_loads():
    rows = load_sentiment()
    labels = {r["label"] for r in rows}
    assert labels == {"positive", "negative"}
