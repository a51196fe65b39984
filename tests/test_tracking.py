"""probes.tracking: projections, Cohen's d of held-out maze outcomes and of correctness feedback."""

from __future__ import annotations

import pytest
import torch

from maze_env import MazeConfig, render_chat, scripted_trajectories
from probes import tracking
from probes.concept_vector import ConceptVector, WidthMismatchError
from probes.grading import answer_questions, grade, load_items
from probes.models import tiny_model
from probes.selection import cohens_d
from probes.tracking import (
    FEEDBACK,
    GradedFeedback,
    TrackingError,
    feedback_conversations,
    feedback_tracking,
    graded_conversations,
    graded_feedback_conversations,
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
    assert (pair["a"].n_positive, pair["a"].n_negative) == (3, 3)
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


# ---- the model's own answers (answers="model") ---------------------------------------------------


@pytest.fixture(scope="module")
def untied():
    # tied random weights echo the prompt's last token ("\n"), giving empty answers; untied ones talk
    return tiny_model("llama", seed=9, n_layers=2, config_overrides={"tie_word_embeddings": False})


def _direct_answer(model, tok, question, max_new_tokens):
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    encoded = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
    )
    return (
        tok.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True).strip().split("\n")[0]
    )


def _assert_truthful(graded: GradedFeedback):
    assert len(graded.items) == len(graded.answers) == len(graded.correct) == graded.n
    by_label = {
        "correct": iter(graded.conversations["correct"]),
        "incorrect": iter(graded.conversations["incorrect"]),
    }
    for row, answer, ok in zip(graded.items, graded.answers, graded.correct):
        label = "correct" if ok else "incorrect"
        chat = next(by_label[label])
        assert [m["role"] for m in chat] == ["user", "assistant", "user"]
        assert chat[0]["content"] == row["question"]
        assert chat[1]["content"] == answer  # the model's own words
        assert chat[2]["content"] == FEEDBACK[label]  # feedback agrees with the grade
        assert ok == grade(graded.dataset, row, answer)
    assert all(next(it, None) is None for it in by_label.values())
    assert (graded.n_correct, graded.n_incorrect) == (sum(graded.correct), graded.n - sum(graded.correct))
    assert graded.counts() == {
        "dataset": graded.dataset,
        "n": graded.n,
        "n_correct": graded.n_correct,
        "n_incorrect": graded.n_incorrect,
    }


@pytest.mark.parametrize("dataset", ["qa", "arithmetic"])
def test_graded_conversations_carry_the_models_greedy_answers(untied, dataset):
    model, tok = untied
    graded = graded_feedback_conversations(
        model, tok, dataset=dataset, n=5, seed=3, max_new_tokens=6, batch_size=2
    )
    assert graded.dataset == dataset and graded.n == 5
    # the same questions the reference construction asks (one seeded shuffle)
    if dataset == "qa":
        reference = feedback_conversations(n=5, seed=3)["correct"]
        assert [r["question"] for r in graded.items] == [c[0]["content"] for c in reference]
    assert {r["id"] for r in graded.items} <= {r["id"] for r in load_items(dataset)}
    direct = [_direct_answer(model, tok, r["question"], 6) for r in graded.items]
    assert list(graded.answers) == direct and all(direct)
    _assert_truthful(graded)


def test_real_grading_splits_answers_by_their_grade(untied):
    """Rows whose aliases are the model's own answer (for half of them) are graded correct: no fakes."""
    model, tok = untied
    rows = [dict(r) for r in load_items("qa")[:6]]
    own = answer_questions(model, tok, [r["question"] for r in rows], max_new_tokens=6)
    for i, row in enumerate(rows):
        row["aliases"] = [own[i]] if i % 2 == 0 else ["zzz-not-said"]
        row["answer"] = row["aliases"][0]
    graded = graded_feedback_conversations(model, tok, items=rows, n=None, seed=0, max_new_tokens=6)
    assert (graded.n_correct, graded.n_incorrect) == (3, 3)
    _assert_truthful(graded)
    vector = _vector(model, seed=4)
    result = feedback_tracking(model, tok, vector, conversations=graded)
    same = feedback_tracking(model, tok, vector, conversations=graded.conversations)
    assert result.d == same.d and (result.n_positive, result.n_negative) == (3, 3)


def test_feedback_tracking_defaults_to_the_models_own_answers(untied, monkeypatch):
    model, tok = untied
    vector = _vector(model, seed=5)
    calls = []

    def every_other(dataset, row, response):  # a random model is never right: fake half the grades
        calls.append(response)
        return len(calls) % 2 == 1

    monkeypatch.setattr(tracking, "grade", every_other)
    result = feedback_tracking(model, tok, vector, n=4, seed=1, batch_size=3, max_new_tokens=5)
    assert (result.n_positive, result.n_negative) == (2, 2)
    calls.clear()
    graded = graded_feedback_conversations(model, tok, n=4, seed=1, batch_size=3, max_new_tokens=5)
    assert list(graded.correct) == [True, False, True, False]
    assert calls == list(graded.answers)
    expected = feedback_tracking(model, tok, vector, conversations=graded.conversations, batch_size=3)
    assert result.d == pytest.approx(expected.d)
    assert torch.allclose(result.positive[0], expected.positive[0])


def test_feedback_tracking_raises_when_a_graded_group_is_too_small(llama):
    model, tok = llama  # tied random weights: every answer is empty, so every answer is wrong
    vector = _vector(model)
    with pytest.raises(
        TrackingError, match=r"0 of 4 'qa' questions correctly and 4 incorrectly.*answers='reference'"
    ):
        feedback_tracking(model, tok, vector, n=4, seed=0, batch_size=8, max_new_tokens=4)
    rows = load_items("arithmetic")[:3]
    one_right = graded_conversations("arithmetic", rows, [str(rows[0]["answer"]), "7 apples", "none"])
    assert list(one_right.correct) == [True, rows[1]["answer"] == 7, False]
    with pytest.raises(TrackingError, match=r"needs >= 2 correct and >= 2 incorrect"):
        feedback_tracking(model, tok, vector, conversations=one_right)
    with pytest.raises(TrackingError, match="answers must be"):
        feedback_tracking(model, tok, vector, answers="gold")
    with pytest.raises(TrackingError, match="QA conversations only"):
        feedback_tracking(model, tok, vector, answers="reference", dataset="arithmetic")


def test_reference_option_reproduces_the_reference_conversations(llama):
    # pinned: the reference construction is unchanged (seeded shuffle, same-topic wrong answers)
    chats = feedback_conversations(n=3, seed=0)
    assert [(c[0]["content"], c[1]["content"]) for c in chats["correct"]] == [
        ("What word do you get when you spell 'tac' backwards?", "cat"),
        ("What is the capital of Norway?", "Oslo"),
        ("What is the largest ocean on Earth?", "Pacific Ocean"),
    ]
    assert [c[1]["content"] for c in chats["incorrect"]] == ["went", "Beijing", "7"]
    model, tok = llama
    vector = _vector(model, seed=6)
    ref = feedback_tracking(model, tok, vector, answers="reference", n=3, seed=0, batch_size=8)
    given = feedback_tracking(model, tok, vector, conversations=chats, batch_size=8)
    assert ref.d == given.d
    assert torch.equal(ref.positive[1], given.positive[1]) and torch.equal(ref.negative[0], given.negative[0])
