"""The paper's user-turn text, action parsing, and whole episodes as chat messages.

Example:
    >>> from maze_env.tiles import Tile, TileSet
    >>> observation_text((50, 48), (Tile.GOLD, Tile.PATH, Tile.MOLD, Tile.MOLD), TileSet())
    "You are in a maze. Currently, you're at location (50, 48). To the north there is 📐; to the east there is 🧾; to the south there is 🗂; to the west there is 🗂. Where do you move? Output only N/E/S/W without punctuation."
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maze_env.dynamics import ACTIONS, DIRECTION_NAMES, OPPOSITE
from maze_env.tiles import Tile, TileSet

INSTRUCTION = "Where do you move? Output only N/E/S/W without punctuation."
_CLAUSE_DIRECTIONS = ("north", "east", "south", "west")
IDENTITY_ORDER = (0, 1, 2, 3)


class ActionParseError(ValueError):
    """The model's answer is not exactly one of N/E/S/W."""


def wind_sentence(push_direction: int) -> str:
    """ "A strong wind from the {D1} blew you {D2}! " where D2 is the push and D1 its opposite."""
    return f"A strong wind from the {DIRECTION_NAMES[OPPOSITE[push_direction]]} blew you {DIRECTION_NAMES[push_direction]}! "


def observation_text(
    position: tuple[int, int],
    neighbours: Sequence[Tile | int],
    tiles: TileSet,
    *,
    order: Sequence[int] = IDENTITY_ORDER,
    wind: int | None = None,
) -> str:
    """Render one user turn.

    Args:
        position: (x, y) of the agent.
        neighbours: tile classes to the N, E, S, W.
        tiles: glyphs to show.
        order: the order in which the N, E, S, W clauses are listed (a permutation of 0..3).
        wind: the direction the wind pushed the agent on the previous turn, or None.
    """
    glyphs = tiles.glyphs
    clauses = [f"to the {_CLAUSE_DIRECTIONS[d]} there is {glyphs[int(neighbours[d])]}" for d in order]
    clauses[0] = clauses[0][0].upper() + clauses[0][1:]
    prefix = wind_sentence(wind) if wind is not None else ""
    x, y = position
    return f"{prefix}You are in a maze. Currently, you're at location ({x}, {y}). {'; '.join(clauses)}. {INSTRUCTION}"


def parse_action(text: str) -> int:
    """Parse a model answer that must be exactly one of N/E/S/W (surrounding whitespace allowed).

    Example:
        >>> parse_action(" E\\n")
        1
    """
    if not isinstance(text, str):
        raise TypeError(f"action text must be a str; got {type(text).__name__}")
    stripped = text.strip()
    if stripped in ACTIONS:
        return ACTIONS.index(stripped)
    raise ActionParseError(f"expected exactly one of N/E/S/W; got {text!r}")


def episode_messages(observations: Sequence[str], actions: Sequence[int]) -> list[dict[str, str]]:
    """Interleave user observations and assistant letters as chat messages (no system prompt).

    ``len(actions)`` may equal ``len(observations)`` (ends on an assistant turn) or be one less
    (ends on a user turn awaiting the next move).
    """
    if len(actions) not in (len(observations), len(observations) - 1):
        raise ValueError(
            f"need len(actions) == len(observations) or one less; got {len(actions)} actions for {len(observations)} observations"
        )
    messages: list[dict[str, str]] = []
    for i, obs in enumerate(observations):
        messages.append({"role": "user", "content": obs})
        if i < len(actions):
            messages.append({"role": "assistant", "content": ACTIONS[int(actions[i])]})
    return messages


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    close_final: bool,
    generation_prompt: bool | None = None,
) -> str:
    """The chat-template text of ``messages`` for any HF tokenizer: the toolkit's one chat renderer.

    Args:
        close_final: with a final assistant message, ``False`` leaves it open (no end-of-turn token after
            it), so the last token is its last token: after a move, the direction letter, the paper's read
            position for vector extraction. ``True`` closes it. Required: the two uses differ.
        generation_prompt: append the assistant header, ready for the model's next answer. ``None``: when
            the last message is the user's.
    """
    if not messages:
        raise ValueError("messages is empty")
    messages = list(messages)
    last_is_assistant = messages[-1]["role"] == "assistant"
    if last_is_assistant and not close_final:
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    if generation_prompt is None:
        generation_prompt = not last_is_assistant
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
