"""Token ids for words the toolkit reads or samples: direction letters, answer words, emotion words.

Tokenizers spell the same word differently at the start of a text, after a space, or after a chat
template's assistant header (``"N"`` vs ``" N"`` vs ``"▁N"``). The helpers here check that a word is one
unambiguous token *where the model emits it*, and raise :class:`TokenizationError` otherwise, so that
logit-as-Q readouts and action-masked sampling never silently read the wrong logit.

Example:
    >>> from probes.models import load_tokenizer
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> ids = direction_token_ids(tok)
    >>> [tok.decode([i]) for i in ids]
    ['N', 'E', 'S', 'W']
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

__all__ = [
    "DIRECTION_LETTERS",
    "TokenizationError",
    "direction_token_ids",
    "first_token_id",
    "single_token_ids",
]

# Same order as maze_env.ACTIONS (action ints 0..3).
DIRECTION_LETTERS: tuple[str, ...] = ("N", "E", "S", "W")
_PROBE_USER_MESSAGE = "Where do you move? Output only N/E/S/W without punctuation."


class TokenizationError(ValueError):
    """A word is not exactly one token (or not the same token) where the model would emit it.

    Attributes:
        word: the offending word.
        tokens: the token strings it was split into, in the context that failed.
    """

    def __init__(self, message: str, *, word: str, tokens: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.word = word
        self.tokens = list(tokens)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _spelled(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    return list(tokenizer.convert_ids_to_tokens(list(ids)))


def _check_str(word: object) -> str:
    if not isinstance(word, str) or not word:
        raise TypeError(f"expected a non-empty str, got {word!r}")
    return word


def first_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The first token of ``word`` encoded on its own (no special tokens); no ambiguity check.

    Example:
        >>> from probes.models import load_tokenizer
        >>> tok = load_tokenizer("smollm2-135m-instruct")
        >>> tok.decode([first_token_id(tok, "North")])
        'North'
    """
    ids = _encode(tokenizer, _check_str(word))
    if not ids:
        raise TokenizationError(f"{word!r} encodes to no tokens", word=word)
    return ids[0]


def single_token_ids(
    tokenizer: PreTrainedTokenizerBase, words: Sequence[str], *, distinct: bool = True
) -> list[int]:
    """The token id of each word, which must encode (on its own, no special tokens) to exactly one token.

    Args:
        tokenizer: any HF tokenizer.
        words: the words; spell them as the model emits them (``" yes"`` with a leading space for a
            word after a space in byte-level BPE tokenizers).
        distinct: also require the ids to be pairwise different.

    Raises:
        TokenizationError: naming the word and its tokenization.

    Example:
        >>> from probes.models import load_tokenizer
        >>> tok = load_tokenizer("smollm2-135m-instruct")
        >>> [tok.decode([i]) for i in single_token_ids(tok, [" yes", " no"])]
        [' yes', ' no']
    """
    if isinstance(words, str):
        raise TypeError(f"words must be a sequence of strings, not the string {words!r}")
    ids: list[int] = []
    for word in words:
        encoded = _encode(tokenizer, _check_str(word))
        if len(encoded) != 1:
            spelled = _spelled(tokenizer, encoded)
            raise TokenizationError(
                f"{word!r} is not a single token: it encodes to {len(encoded)} tokens {spelled} (ids {encoded})",
                word=word,
                tokens=spelled,
            )
        ids.append(encoded[0])
    if distinct:
        _check_distinct(tokenizer, words, ids)
    return ids


def _check_distinct(tokenizer: PreTrainedTokenizerBase, words: Sequence[str], ids: Sequence[int]) -> None:
    seen: dict[int, str] = {}
    for word, token_id in zip(words, ids):
        if token_id in seen:
            raise TokenizationError(
                f"{word!r} and {seen[token_id]!r} map to the same token id {token_id} "
                f"({_spelled(tokenizer, [token_id])[0]!r}); the words must be distinct tokens",
                word=word,
                tokens=_spelled(tokenizer, [token_id]),
            )
        seen[token_id] = word


def _check_in_context(
    tokenizer: PreTrainedTokenizerBase, word: str, token_id: int, prefix: str, where: str
) -> None:
    """``prefix + word`` must tokenize as ``prefix``'s tokens followed by exactly ``token_id``."""
    prefix_ids = _encode(tokenizer, prefix)
    full_ids = _encode(tokenizer, prefix + word)
    if full_ids[: len(prefix_ids)] != prefix_ids or full_ids[len(prefix_ids) :] != [token_id]:
        common = 0
        while common < min(len(prefix_ids), len(full_ids)) and prefix_ids[common] == full_ids[common]:
            common += 1
        tail = full_ids[common:]
        spelled = _spelled(tokenizer, tail)
        raise TokenizationError(
            f"{word!r} is token {token_id} ({_spelled(tokenizer, [token_id])[0]!r}) on its own, but {where} "
            f"the text ends in tokens {spelled} (ids {tail}) instead: the model would not emit it as that "
            "single token",
            word=word,
            tokens=spelled,
        )


def direction_token_ids(
    tokenizer: PreTrainedTokenizerBase, letters: Sequence[str] = DIRECTION_LETTERS
) -> list[int]:
    """The token id the model emits for each letter as the whole assistant message.

    Checks, for every letter: it encodes on its own to exactly one token; with a chat template, that
    token is what follows the assistant header (``prompt + letter`` tokenizes as the prompt's tokens plus
    that one id, the sampling position) and what ends a conversation whose final assistant message is
    the open letter (the read position of ``maze_env.render_chat(..., close_final=False)``); without a
    chat template, the same after a newline. Finally the ids must be distinct.

    Args:
        tokenizer: an HF tokenizer, e.g. from :func:`probes.models.load_model`.
        letters: the action letters, in action order (default ``maze_env.ACTIONS``: N, E, S, W).

    Returns:
        One token id per letter, in the same order.

    Raises:
        TokenizationError: naming the letter and how it was tokenized.

    Example:
        >>> from probes.models import load_tokenizer
        >>> direction_token_ids(load_tokenizer("smollm2-135m-instruct"))
        [62, 53, 67, 71]
    """
    if isinstance(letters, str):
        raise TypeError(f"letters must be a sequence of strings, not the string {letters!r}")
    if not letters:
        raise ValueError("letters is empty")
    ids = single_token_ids(tokenizer, letters, distinct=False)
    for letter, token_id in zip(letters, ids):
        if tokenizer.chat_template:
            user = [{"role": "user", "content": _PROBE_USER_MESSAGE}]
            prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            _check_in_context(
                tokenizer, letter, token_id, prompt, "after the chat template's assistant header"
            )
            conversation = [*user, {"role": "assistant", "content": letter}]
            open_final = tokenizer.apply_chat_template(
                conversation, tokenize=False, continue_final_message=True
            )
            if not open_final.endswith(letter):
                raise TokenizationError(
                    f"the chat template does not render the assistant message {letter!r} verbatim at the "
                    f"end of the conversation (it ends with {open_final[-40:]!r})",
                    word=letter,
                )
            _check_in_context(
                tokenizer,
                letter,
                token_id,
                open_final[: -len(letter)],
                "at the end of a rendered conversation",
            )
        else:
            _check_in_context(tokenizer, letter, token_id, "\n", "after a newline")
    _check_distinct(tokenizer, letters, ids)
    return ids
