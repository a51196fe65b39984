"""probes.tracking: projections, Cohen's d of held-out maze outcomes and of correctness feedback."""

from __future__ import annotations

import pytest
import torch

from maze_env import MazeConfig, render_chat, scripted_trajectories
from probes.concept_vector import ConceptVector, WidthMismatchError
from probes.models import tiny_model
from probes.selection import cohens_d
from probes.tracking import (
    FEEDBACK,
    TrackingError,
    feedback_conversations,
    feedback_tracking,
    maze_tracking,
    project,
    template_length,
    tracking_from_activations,
)

CONFIG = MazeConfig(size=30)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=9, n_layers=2)


def _vector(model, seed=0) -> ConceptVector:
    from probes.layers import model_family, model_name

    g = torch.Generator().manual_seed(seed)
    return ConceptVector(
        {0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
        model_name=model_name(model),
        model_family=model_family(model),
        concept="Gold",
    )


def test_projection_is_scalar_projection():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert project(a, torch.tensor([0.0, 2.0])).tolist() == [4.0, 0.0]
    with pytest.raises(WidthMismatchError):
        project(a, torch.ones(3))
    with pytest.raises(TrackingError, match="zero"):
        project(a, torch.zeros(2))


def test_tracking_d_of_a_planted_shift_matches_hand_value():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g)
    unit = v / v.norm()
    gold = torch.randn(30, 16, generator=g) + 2.0 * unit
    mold = torch.randn(40, 16, generator=g) - 2.0 * unit
    vector = ConceptVector({3: v}, concept="Gold")
    result = tracking_from_activations(vector, {3: gold}, {3: mold}, labels=("Gold-final", "Mold-final"))
    pos, neg = gold.double() @ unit.double(), mold.double() @ unit.double()
    pooled = (((30 - 1) * pos.var() + (40 - 1) * neg.var()) / (30 + 40 - 2)).sqrt()
    assert result.d[3] == pytest.approx(float((pos.mean() - neg.mean()) / pooled), rel=1e-9)
    assert result.d[3] > 3.0
    assert result.best_layer() == 3
    with pytest.raises(TrackingError, match="no shared layers"):
        tracking_from_activations(vector, {0: gold}, {0: mold})
    with pytest.raises(TrackingError, match=">= 2 samples"):
        tracking_from_activations(vector, {3: gold[:1]}, {3: mold})


def test_maze_tracking_equals_manual_projection(llama):
    model, tok = llama
    gold = scripted_trajectories("gold", 3, config=CONFIG, base_seed=9000)
    mold = scripted_trajectories("mold", 3, config=CONFIG, base_seed=9000)
    vector = _vector(model)
    result = maze_tracking(model, tok, vector, gold=gold, mold=mold, batch_size=2)

    def final_token(trajectory):
        encoded = tok(
            render_chat(tok, trajectory.messages, close_final=False),
            return_tensors="pt",
            add_special_tokens=False,
        )
        with torch.no_grad():
            return model(**encoded, output_hidden_states=True).hidden_states[1][0, -1]

    v = vector[0].double()
    pos = torch.stack([final_token(t) for t in gold]).double() @ v / v.norm()
    neg = torch.stack([final_token(t) for t in mold]).double() @ v / v.norm()
    assert torch.allclose(result.positive[0], pos, atol=1e-4)
    assert result.d[0] == pytest.approx(cohens_d(pos, neg), rel=1e-3)
    assert result.labels == ("Gold-final", "Mold-final")


def test_several_vectors_in_one_pass_equal_single_calls(llama):
    model, tok = llama
    gold = scripted_trajectories("gold", 2, config=CONFIG, base_seed=9100)
    mold = scripted_trajectories("mold", 2, config=CONFIG, base_seed=9100)
    a, b = _vector(model, 1), _vector(model, 2).select([1])
    both = maze_tracking(model, tok, {"a": a, "b": b}, gold=gold, mold=mold)
    assert both["a"].d == maze_tracking(model, tok, a, gold=gold, mold=mold).d
    assert both["b"].d == maze_tracking(model, tok, b, gold=gold, mold=mold).d
    conversations = feedback_conversations(n=3, seed=0)
    pair = feedback_tracking(model, tok, {"a": a, "b": b}, conversations=conversations)
    assert pair["b"].d == pytest.approx(feedback_tracking(model, tok, b, conversations=conversations).d)


def test_feedback_conversations_are_truthful_and_seeded():
    conversations = feedback_conversations(n=20, seed=1)
    assert len(conversations["correct"]) == len(conversations["incorrect"]) == 20
    for right, wrong in zip(conversations["correct"], conversations["incorrect"]):
        assert right[0] == wrong[0]  # same question
        assert right[1]["content"] != wrong[1]["content"]
        assert (right[2]["content"], wrong[2]["content"]) == (FEEDBACK["correct"], FEEDBACK["incorrect"])
    assert feedback_conversations(n=20, seed=1) == conversations
    with pytest.raises(TrackingError):
        feedback_conversations([{"question": "q", "answer": "a"}])


def test_feedback_tracking_projects_the_final_assistant_template(llama):
    model, tok = llama
    conversations = feedback_conversations(n=4, seed=2)
    vector = _vector(model, seed=1)
    result = feedback_tracking(model, tok, vector, conversations=conversations, batch_size=3)
    k = template_length(tok, conversations["correct"][0])
    assert k >= 2  # SmolLM2: "<|im_start|>assistant\n"

    def mean_projection(chat):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        encoded = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hidden = model(**encoded, output_hidden_states=True).hidden_states[1][0, -k:]
        return float((hidden.double() @ vector[0].double()).mean() / vector[0].double().norm())

    expected = [mean_projection(chat) for chat in conversations["correct"]]
    assert result.positive[0].tolist() == pytest.approx(expected, abs=1e-4)
    negative = [mean_projection(chat) for chat in conversations["incorrect"]]
    assert result.d[0] == pytest.approx(cohens_d(torch.tensor(expected), torch.tensor(negative)), rel=1e-3)


def test_tracking_rejects_vectors_of_another_model(llama):
    model, tok = llama
    foreign = ConceptVector({0: torch.ones(32)}, concept="Gold")
    with pytest.raises(WidthMismatchError):
        maze_tracking(model, tok, foreign, n=2, config=CONFIG)
