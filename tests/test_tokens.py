"""probes.tokens: direction-letter ids and single-token checks on the real SmolLM2 and Gemma 3 tokenizers."""

from __future__ import annotations

import pytest

import maze_env
from probes.models import load_tokenizer
from probes.tokens import (
    DIRECTION_LETTERS,
    TokenizationError,
    direction_token_ids,
    first_token_id,
    single_token_ids,
)

# Hand-checked ids: "N", "E", "S", "W" without a leading space in both vocabularies.
EXPECTED_DIRECTION_IDS = {
    "smollm2-135m-instruct": [62, 53, 67, 71],
    "gemma3-270m": [236797, 236788, 236773, 236824],
}
SPACE_PREFIXED_N = {"smollm2-135m-instruct": "ĠN", "gemma3-270m": "▁N"}


@pytest.fixture(params=sorted(EXPECTED_DIRECTION_IDS))
def named_tokenizer(request):
    return request.param, load_tokenizer(request.param)  # a fresh copy: tests may change its template


def test_direction_letters_follow_the_maze_action_order() -> None:
    assert DIRECTION_LETTERS == tuple(maze_env.ACTIONS)


def test_direction_ids_decode_back_to_the_letters(named_tokenizer) -> None:
    name, tok = named_tokenizer
    ids = direction_token_ids(tok)
    assert ids == EXPECTED_DIRECTION_IDS[name]
    assert [tok.decode([i]) for i in ids] == ["N", "E", "S", "W"]


def test_direction_id_is_the_last_token_of_an_open_final_move(named_tokenizer) -> None:
    """The read position of maze_env.render_chat(..., close_final=False) is the letter's token."""
    _, tok = named_tokenizer
    ids = direction_token_ids(tok)
    for letter, token_id in zip(DIRECTION_LETTERS, ids):
        messages = [
            {"role": "user", "content": "You are in a maze."},
            {"role": "assistant", "content": "S"},
            {"role": "user", "content": "Where do you move?"},
            {"role": "assistant", "content": letter},
        ]
        text = maze_env.render_chat(tok, messages, close_final=False)
        assert tok.encode(text, add_special_tokens=False)[-1] == token_id


def test_multi_token_letter_raises_naming_letter_and_tokens(named_tokenizer) -> None:
    _, tok = named_tokenizer
    with pytest.raises(
        TokenizationError, match=r"'N\.' is not a single token: it encodes to 2 tokens"
    ) as info:
        direction_token_ids(tok, ("S", "N."))
    assert info.value.word == "N."
    assert info.value.tokens == ["N", "."]


def test_duplicate_letters_raise(named_tokenizer) -> None:
    _, tok = named_tokenizer
    with pytest.raises(TokenizationError, match="same token id"):
        direction_token_ids(tok, ("N", "E", "N"))


def test_template_that_glues_a_space_to_the_letter_raises(named_tokenizer) -> None:
    """A letter that is one token on its own but another token after the assistant header is ambiguous."""
    name, tok = named_tokenizer
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(TokenizationError, match="after the chat template's assistant header") as info:
        direction_token_ids(tok)
    assert info.value.word == "N"
    assert info.value.tokens == [SPACE_PREFIXED_N[name]]


def test_tokenizer_without_chat_template_is_checked_after_a_newline(named_tokenizer) -> None:
    name, tok = named_tokenizer
    tok.chat_template = None
    assert direction_token_ids(tok) == EXPECTED_DIRECTION_IDS[name]


def test_direction_ids_reject_a_bare_string(named_tokenizer) -> None:
    _, tok = named_tokenizer
    with pytest.raises(TypeError, match="not the string 'NESW'"):
        direction_token_ids(tok, "NESW")
    with pytest.raises(ValueError, match="empty"):
        direction_token_ids(tok, ())


def test_single_token_ids_and_first_token_id() -> None:
    tok = load_tokenizer("smollm2-135m-instruct")
    yes, no = single_token_ids(tok, [" yes", " no"])
    assert tok.decode([yes]) == " yes" and tok.decode([no]) == " no"
    with pytest.raises(TokenizationError, match="encodes to 3 tokens"):
        single_token_ids(tok, ["📐"])
    assert single_token_ids(tok, ["N", "N"], distinct=False) == [62, 62]
    emoji_ids = tok.encode("📐", add_special_tokens=False)
    assert first_token_id(tok, "📐") == emoji_ids[0]
    assert tok.decode([first_token_id(tok, " yes")]) == " yes"
    with pytest.raises(TypeError):
        first_token_id(tok, "")
