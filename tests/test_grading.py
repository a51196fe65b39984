"""probes.grading: the one answer grader (QA aliases, arithmetic numbers) and greedy short answers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from probes.grading import (
    DATASETS,
    answer_questions,
    dataset_path,
    first_number,
    grade,
    grade_answer,
    grade_number,
    load_items,
    short_answer,
)
from probes.models import tiny_model


def test_grade_answer_aliases_case_accents_and_punctuation():
    assert grade_answer("Paris", ["Paris"])
    assert grade_answer("paris is the capital.", ["Paris"])
    assert grade_answer("PARIS!", ["Paris"])
    assert grade_answer('"Paris", of course', ["Paris"])
    assert grade_answer("It is 42.", ["42", "forty-two"])
    assert grade_answer("forty-two", ["42", "forty-two"])
    assert grade_answer("Brasília", ["Brasilia"])
    assert grade_answer("Brasilia, I think", ["Brasília"])
    assert grade_answer("the   United\tKingdom", ["United Kingdom"])  # whitespace collapsed
    assert grade_answer("3.14 is pi", ["3.14"])
    assert not grade_answer("It is 421.", ["42"])  # whole phrase only
    assert not grade_answer("Parisian", ["Paris"])
    assert not grade_answer("Lyon. Not Paris.", ["Paris"])  # only the first sentence counts
    assert not grade_answer("Lyon\nParis", ["Paris"])  # only the first line counts
    assert not grade_answer("", ["Paris"])


def test_initials_and_titles_do_not_end_the_first_sentence():
    # the shipped answers themselves: "J. K. Rowling", "Dr. Seuss", "Mt. Everest", "F. Scott Fitzgerald"
    assert grade_answer("J. K. Rowling", ["J. K. Rowling"])
    assert grade_answer("J.K. Rowling wrote them.", ["Rowling"])
    assert grade_answer("dr. seuss", ["Dr. Seuss"])
    assert grade_answer("It was Dr. Seuss. Not Geisel.", ["Seuss"])
    assert grade_answer("Mt. Everest", ["Mount Everest", "Mt. Everest"])
    assert not grade_answer("Dr. Who. Then Dr. Seuss.", ["Seuss"])  # the first sentence still ends


def test_grade_qa_uses_answer_and_aliases():
    row = {"question": "Largest ocean?", "answer": "Pacific Ocean", "aliases": ["Pacific Ocean", "Pacific"]}
    assert grade("qa", row, "The Pacific.")
    assert grade("qa", row, "pacific ocean")
    assert not grade("qa", row, "Atlantic")
    assert grade("qa", {"question": "q", "answer": "Oslo"}, "Oslo")  # no aliases: the answer alone
    shipped = {r["id"]: r for r in load_items("qa")}["qa-001"]
    assert grade("qa", shipped, "paris") and not grade("qa", shipped, "Lyon")


def test_first_number_and_arithmetic_grading():
    assert first_number("There are 42 apples") == Decimal(42)
    assert first_number("He has $1,250.50 left") == Decimal("1250.50")
    assert first_number("-3 or 4") == Decimal(-3)
    assert first_number("no digits") is None
    assert grade_number("42", 42)
    assert grade_number("42.", 42)  # a sentence end is not a decimal point
    assert grade_number("42.0 stickers", 42)
    assert grade_number("The answer is 1,200.", 1200)
    assert grade_number("$26", 26)
    assert not grade_number("23 + 19 = 42", 42)  # the first number counts
    assert not grade_number("421", 42)
    assert not grade_number("forty-two", 42)  # digits only
    assert not grade_number("", 42)
    row = {"question": "Kenji has 23 stickers...", "answer": 42}
    assert grade("arithmetic", row, "Kenji has 42 stickers now.")
    assert not grade("arithmetic", row, "He had 23 and now 42.")
    with pytest.raises(ValueError, match="not a number"):
        grade_number("42", "forty-two")
    with pytest.raises(KeyError, match="choose one of"):
        grade("gsm8k", row, "42")


def test_shipped_sets_load_and_every_reference_answer_grades_correct():
    for name in DATASETS:
        assert dataset_path(name).parent.name == "data" and dataset_path(name).parent.parent.name == "probes"
    qa, arithmetic = load_items("qa"), load_items("arithmetic")
    assert len(qa) == 340 and len(arithmetic) == 200
    assert all(grade("qa", r, str(r["answer"])) for r in qa)
    assert all(grade("arithmetic", r, str(r["answer"])) for r in arithmetic)
    assert all(grade("qa", r, alias) for r in qa for alias in r["aliases"])
    with pytest.raises(KeyError, match="choose one of"):
        dataset_path("refusal")


def test_steering_reads_the_moved_arithmetic_set_and_the_generator_writes_it():
    from steering.data import dataset_path as steering_path
    from steering.data import load_jsonl, make_arithmetic

    assert steering_path("arithmetic") == dataset_path("arithmetic")
    assert make_arithmetic.OUTPUT == dataset_path("arithmetic")
    assert load_jsonl("arithmetic") == load_items("arithmetic")


def test_short_answer_keeps_the_first_line():
    assert short_answer("  Paris\nIt is in France.") == "Paris"
    assert short_answer("\n\n") == ""
    assert short_answer(" 42 ") == "42"


@pytest.fixture(scope="module")
def untied():
    # tied random weights echo the prompt's last token ("\n"), giving empty answers; untied ones talk
    return tiny_model("llama", seed=9, n_layers=2, config_overrides={"tie_word_embeddings": False})


def test_answer_questions_equals_unbatched_greedy_generate(untied):
    model, tok = untied
    questions = ["What is the capital of France?", "Name a prime number.", "Is water wet? Say yes or no."]
    batched = answer_questions(model, tok, questions, max_new_tokens=6, batch_size=2)
    direct = []
    for q in questions:
        text = tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        direct.append(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    assert batched == [short_answer(d) for d in direct]
    assert all(batched)  # non-empty: the comparison is not vacuous
    with pytest.raises(TypeError):
        answer_questions(model, tok, "one string")
    with pytest.raises(ValueError):
        answer_questions(model, tok, questions, max_new_tokens=0)
