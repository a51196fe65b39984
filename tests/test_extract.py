"""probes.extract: exact Eq. 1 from captured activations, provenance, reward vectors, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import maze_env
from probes import positions as P
from probes.extract import (
    ClassActivations,
    ExtractionError,
    aggregate,
    classes_hash,
    extract_activations,
    extract_class_activations,
    reward_activations,
    reward_trajectories,
    reward_vectors,
    train_concept_vectors,
)
from probes.models import tiny_model
from probes.record import CaptureError

SMALL_MAZE = maze_env.MazeConfig(size=30)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=2, n_layers=3)


def small_classes() -> dict[str, list[str]]:
    return {
        "Mold": ["You hit a wall of mold.", "Mold again, ouch"],
        "Gold": ["Gold! A ruler.", "You found the gold tile.", "Shiny gold"],
        "Path": ["A receipt on the path."],
    }


def test_train_concept_vectors_is_eq1_by_hand(tiny):
    model, tok = tiny
    texts = small_classes()
    vectors = train_concept_vectors(model, tok, texts, batch_size=2)
    acts = {name: extract_activations(model, tok, items) for name, items in texts.items()}
    for layer in range(3):
        others = torch.cat([acts["Gold"][layer], acts["Path"][layer]])
        expected = acts["Mold"][layer].mean(0) - others.mean(0)
        torch.testing.assert_close(vectors["Mold"][layer], expected, rtol=1e-5, atol=1e-5)
        expected_path = acts["Path"][layer].mean(0) - torch.cat(
            [acts["Mold"][layer], acts["Gold"][layer]]
        ).mean(0)
        torch.testing.assert_close(vectors["Path"][layer], expected_path, rtol=1e-5, atol=1e-5)
    v = vectors["Gold"]
    assert v.n_per_class == {"Mold": 2, "Gold": 3, "Path": 1}
    assert v.method == "mean_diff" and v.position == "last" and v.site == "resid_post"
    assert v.model_name == model.config.welfare_axis_name and v.model_family == "llama/L3/d64"
    assert v.dataset_hash == classes_hash(texts)
    assert v.model_dtype == "float32" and v.provenance()["model_dtype"] == "float32"


def test_vectors_record_the_weights_dtype_and_it_survives_saving(tiny, tmp_path):
    import copy

    from probes.concept_vector import ConceptVector

    model, tok = tiny
    half = copy.deepcopy(model).to(torch.bfloat16)
    v = train_concept_vectors(half, tok, small_classes(), batch_size=2)["Mold"]
    assert v.model_dtype == "bfloat16"
    v.save(tmp_path / "mold")
    assert ConceptVector.load(tmp_path / "mold").model_dtype == "bfloat16"


def test_single_reference_method_and_layer_subset(tiny):
    model, tok = tiny
    vectors = train_concept_vectors(model, tok, small_classes(), method="single_reference", layers=[-1])
    assert vectors["Mold"].layers == [2] and vectors["Mold"].method == "single_reference:Path"
    acts = extract_class_activations(model, tok, small_classes(), layers=[2]).at_layer(2)
    torch.testing.assert_close(vectors["Mold"][2], acts["Mold"].mean(0) - acts["Path"].mean(0))


def test_reward_vectors_read_the_final_direction_letter(tiny):
    model, tok = tiny
    chats = reward_trajectories(4, config=SMALL_MAZE)
    assert sorted(chats) == ["Gold", "Mold", "Path"] and all(len(c) == 4 for c in chats.values())
    text = maze_env.render_chat(tok, chats["Mold"][1], close_final=False)
    encoded = P.encode_texts(tok, [text])
    last = tok.decode(encoded["input_ids"][0, -1])
    assert last == chats["Mold"][1][-1]["content"] and last in maze_env.ACTIONS

    vectors = reward_vectors(model, tok, n_per_class=4, config=SMALL_MAZE, batch_size=5)
    activations = reward_activations(model, tok, n_per_class=4, config=SMALL_MAZE, batch_size=3)
    assert activations.metadata["seed"] == 474747 and activations.metadata["maze_config"]["size"] == 30
    rendered = {
        name: [maze_env.render_chat(tok, m, close_final=False) for m in items]
        for name, items in chats.items()
    }
    assert vectors["Mold"].dataset_hash == classes_hash(rendered)
    by_hand = {name: extract_activations(model, tok, items) for name, items in rendered.items()}
    for layer in range(3):
        expected = by_hand["Mold"][layer].mean(0) - torch.cat(
            [by_hand["Gold"][layer], by_hand["Path"][layer]]
        ).mean(0)
        torch.testing.assert_close(vectors["Mold"][layer], expected, rtol=1e-5, atol=1e-5)
    # Seeded and reproducible: the same call gives the same vectors.
    again = reward_vectors(model, tok, n_per_class=4, config=SMALL_MAZE, batch_size=5)
    for name in ("Mold", "Gold", "Path"):
        torch.testing.assert_close(again[name][1], vectors[name][1], rtol=0, atol=0)


def test_split_is_disjoint_and_keeps_provenance(tiny):
    model, tok = tiny
    acts = reward_activations(model, tok, n_per_class=5, config=SMALL_MAZE, layers=[0])
    train, test = acts.split(0.4, seed=1)
    assert train.n_per_class == {"Mold": 3, "Gold": 3, "Path": 3}
    assert test.n_per_class == {"Mold": 2, "Gold": 2, "Path": 2}
    joined = torch.cat([train.at_layer(0)["Gold"], test.at_layer(0)["Gold"]])
    assert torch.equal(joined.sort(dim=0).values, acts.at_layer(0)["Gold"].sort(dim=0).values)
    assert train.dataset_hash == acts.dataset_hash and test.metadata["part"] == "held_out"
    with pytest.raises(ExtractionError, match="too few"):
        acts.split(0.01)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_matched_split_holds_out_the_same_indices_in_every_class_with_balanced_letters(seed):
    n = 100  # the scripted design: sample i of every class ends with letter i % 4
    index = torch.arange(n, dtype=torch.float32)[:, None]
    acts = ClassActivations({name: {0: index + k * 1000} for k, name in enumerate(("Mold", "Gold", "Path"))})
    train, held = acts.split(0.2, seed=seed)
    held_idx = {name: (held.at_layer(0)[name][:, 0] % 1000).long().tolist() for name in acts.classes}
    assert held_idx["Mold"] == held_idx["Gold"] == held_idx["Path"] and len(held_idx["Mold"]) == 20
    for part, expected in ((train, 20), (held, 5)):  # every final letter equally often in each part
        letters = (part.at_layer(0)["Gold"][:, 0] % 1000).long() % 4
        assert torch.bincount(letters, minlength=4).tolist() == [expected] * 4
    assert held.metadata["split"]["matched"] is True
    # the per-class random split (the option) holds out other indices per class
    _, per_class = acts.split(0.2, seed=seed, matched=False)
    others = {
        name: sorted((per_class.at_layer(0)[name][:, 0] % 1000).long().tolist()) for name in acts.classes
    }
    assert len({tuple(v) for v in others.values()}) > 1
    uneven = ClassActivations({"Mold": {0: index}, "Gold": {0: index[:90]}})
    with pytest.raises(ExtractionError, match="one size"):
        uneven.split(0.2)
    assert uneven.split(0.2, matched=False)[1].n_per_class == {"Mold": 20, "Gold": 18}


def test_errors(tiny):
    model, tok = tiny
    with pytest.raises(ExtractionError, match="'Gold' is empty"):
        train_concept_vectors(model, tok, {"Mold": ["a"], "Gold": []})
    with pytest.raises(ExtractionError, match="empty"):
        train_concept_vectors(model, tok, {})
    with pytest.raises(ExtractionError, match="n_per_class"):
        reward_trajectories(0)
    acts = extract_class_activations(model, tok, small_classes(), layers=[0])
    with pytest.raises(ExtractionError, match="unknown classes"):
        aggregate(acts, classes=["Lava"])
    with pytest.raises(ExtractionError, match="layers"):
        ClassActivations({"a": {0: torch.zeros(1, 2)}, "b": {1: torch.zeros(1, 2)}})
    embed = model.get_input_embeddings().weight
    saved = embed.data.clone()
    try:
        with torch.no_grad():
            embed.fill_(float("nan"))
        with pytest.raises(CaptureError, match="non-finite"):
            train_concept_vectors(model, tok, small_classes(), layers=[0])
    finally:
        with torch.no_grad():
            embed.copy_(saved)


@pytest.mark.slow
def test_reward_vectors_on_real_smollm2_are_finite_and_reproducible():
    from probes.models import load_model
    from probes.selection import select_layer

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    config = maze_env.MazeConfig(n_turns=3)
    acts = reward_activations(model, tok, n_per_class=12, config=config, batch_size=12)
    train, held_out = acts.split(0.25, seed=0)
    vectors = aggregate(train)
    again = aggregate(
        reward_activations(model, tok, n_per_class=12, config=config, batch_size=12).split(0.25)[0]
    )
    assert vectors["Mold"].layers == list(range(30)) and vectors["Mold"].d_model == 576
    for name in ("Mold", "Gold", "Path"):
        assert all(torch.isfinite(t).all() for t in vectors[name].directions.values())
        torch.testing.assert_close(again[name][15], vectors[name][15], rtol=1e-6, atol=1e-6)
    selection = select_layer(vectors["Mold"], held_out)
    assert 0 <= selection.layer < 30 and np.isfinite(selection.auroc).all()
