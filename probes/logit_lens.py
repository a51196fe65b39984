"""Logit lens of a direction: which tokens a residual-stream vector promotes and suppresses.

``lens_logits(model, v)`` is ``W_U^T v`` (one value per vocabulary token; ``W_U`` from
``probes.layers.unembed``, so ``logits = final_norm(resid) @ W_U``). Two variants:

- ``through_norm=False`` (raw, the paper's reading [I]): ``v @ W_U``.
- ``through_norm=True``: ``final_norm(v) @ W_U``, the final norm module applied to ``v`` itself.

**What "through the final norm" means for RMSNorm.** RMSNorm is ``x / rms(x) * g`` (Llama) or
``x / rms(x) * (1 + w)`` (Gemma 3). It is invariant to the scale of its input (``norm(a v) == norm(v)``
for ``a > 0``, up to ``eps``), so the norm of a *direction* is not "the effect of adding ``v`` to the
residual stream": that effect depends on the residual it is added to. What the norm does contribute,
whatever the residual, is the per-dimension gain ``g``: a direction in a dimension the model
down-weights before the unembedding reaches the logits weakly. ``final_norm(v) @ W_U`` equals
``(g * v) @ W_U / rms(v)``: the gain-weighted lens, rescaled by one positive number, so its top/bottom
*rankings* are those of ``(g * v) @ W_U`` and only its absolute values depend on ``rms(v)``. No mean is
subtracted (RMSNorm has no centring), so nothing else changes. For a LayerNorm model (GPT-2 family) the
module also centres ``v`` and adds its bias; the bias shifts every token's logit by a fixed vector, so
compare rankings, not values, across models there.

The failure/impossibility score (:func:`failure_score`) asks whether a vector promotes failure words over
success words. Each word list is resolved to token ids by :func:`resolve_words`, which by default keeps
only **whole words**: the spellings of a word (``w``, ``" w"``, capitalised, and for a phrase its
CamelCase identifier, ``"does not exist"`` -> ``"DoesNotExist"``) that encode to exactly one token of
this tokenizer's vocabulary. Words with no such spelling are dropped and listed
(``ResolvedWords.not_in_vocabulary``). Why: taking the *first* token of a multi-token word (the
``whole_words=False`` option, the old rule) turns ``"forbidden"`` into ``"for"``, ``"isn't"`` into
``"is"`` and ``"Stuck"`` into ``"St"``; on SmolLM2 the shipped list then resolved to 246 ids, mostly such
generic subwords, whose lens values say nothing about failure and dilute the score towards 0.5. The
shipped lists (``probes/data/failure_words.txt`` / ``success_words.txt``, provenance in
``probes/data/README.md``) hold English words and the Chinese tokens the paper found in v_Mold's and
v_Gold's lens (不存在, 是不可能, 不行, 失败, ...); each tokenizer keeps those it holds whole (Gemma 3 holds most
Chinese ones, SmolLM2 none). :class:`FailureScore` lists the tokens it used. Then

- ``difference``: mean lens value of failure tokens minus mean over success tokens,
- ``standardized``: that difference divided by the standard deviation of the lens over the whole
  vocabulary (comparable across vectors of different norms),
- ``auroc``: P(lens value of a random failure token > that of a random success token), ties count half
  (rank-based, scale-free; 0.5 = no preference).

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> import torch
    >>> lens = logit_lens(model, tok, torch.randn(64), k=3)
    >>> len(lens.top), len(lens.bottom)
    (3, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes import layers as _layers
from probes.concept_vector import ConceptVector, WidthMismatchError
from probes.selection import auroc

DATA_DIR = Path(__file__).resolve().parent / "data"

Mode = Literal["raw", "norm"]


class LogitLensError(ValueError):
    """Bad logit-lens input: wrong width, unknown layer, an empty or overlapping word list."""


def _direction(vector: ConceptVector | Tensor, layer: int | None) -> Tensor:
    if isinstance(vector, ConceptVector):
        if layer is None:
            if len(vector) != 1:
                raise LogitLensError(f"pick a layer: the vector has layers {vector.layers}")
            layer = vector.layers[0]
        return vector[layer]
    if not isinstance(vector, Tensor):
        raise TypeError(f"vector must be a ConceptVector or a Tensor, got {type(vector).__name__}")
    if vector.ndim != 1:
        raise LogitLensError(f"a direction must be 1-D (d_model,), got shape {tuple(vector.shape)}")
    return vector


@torch.no_grad()
def lens_logits(
    model: nn.Module, direction: Float[Tensor, " d_model"], *, through_norm: bool = False
) -> Float[Tensor, " d_vocab"]:
    """``direction @ W_U`` (raw) or ``final_norm(direction) @ W_U`` in float32 on the CPU.

    Raises:
        WidthMismatchError: ``direction`` does not have the model's ``d_model``.
    """
    w_u = _layers.unembed(model)  # (d_model, d_vocab)
    if direction.shape != (w_u.shape[0],):
        raise WidthMismatchError(
            f"direction has shape {tuple(direction.shape)}, the model's d_model is {w_u.shape[0]}"
        )
    v = direction.detach().to(device=w_u.device, dtype=w_u.dtype)
    if through_norm:
        v = _layers.final_norm(model)(v[None, None, :])[0, 0]
    return (v @ w_u).float().cpu()


@dataclass(frozen=True)
class TokenValue:
    """One token of a logit-lens list."""

    token_id: int
    token: str
    value: float


@dataclass(frozen=True)
class LogitLens:
    """Top and bottom tokens of a direction's logit lens.

    Attributes:
        top: the ``k`` most promoted tokens, highest first.
        bottom: the ``k`` most suppressed tokens, lowest first.
        mode: ``"raw"`` (``v @ W_U``) or ``"norm"`` (``final_norm(v) @ W_U``).
        layer: the vector's layer, when known.
        concept: the vector's concept label, when known.
    """

    top: tuple[TokenValue, ...]
    bottom: tuple[TokenValue, ...]
    mode: Mode
    layer: int | None = None
    concept: str = ""

    @property
    def top_tokens(self) -> list[str]:
        return [t.token for t in self.top]

    @property
    def bottom_tokens(self) -> list[str]:
        return [t.token for t in self.bottom]


def _tokens(tokenizer: Any, ids: Sequence[int], values: Sequence[float]) -> tuple[TokenValue, ...]:
    return tuple(
        TokenValue(int(i), tokenizer.decode([int(i)]), float(v)) for i, v in zip(ids, values, strict=True)
    )


def logit_lens(
    model: nn.Module,
    tokenizer: Any,
    vector: ConceptVector | Tensor,
    layer: int | None = None,
    *,
    k: int = 5,
    through_norm: bool = False,
) -> LogitLens:
    """Top-``k`` and bottom-``k`` tokens of ``vector``'s logit lens, decoded.

    Args:
        model: the model whose unembedding (and final norm) to use.
        tokenizer: decodes the token ids.
        vector: a ``ConceptVector`` (then ``layer`` picks the direction) or a ``(d_model,)`` tensor.
        layer: layer of the ConceptVector (the paper reads ``floor(5L/6)``).
        k: tokens per list.
        through_norm: apply the final norm to the vector first (see the module docstring).

    Example:
        >>> logit_lens(model, tok, v_mold, layer=25, k=5).top_tokens  # doctest: +SKIP
        [' cannot', ' impossible', ...]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LogitLensError(f"k must be a positive int, got {k!r}")
    direction = _direction(vector, layer)
    if isinstance(vector, ConceptVector) and layer is None:
        layer = vector.layers[0]
    logits = lens_logits(model, direction, through_norm=through_norm)
    k = min(k, logits.shape[0])
    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    return LogitLens(
        top=_tokens(tokenizer, top.indices.tolist(), top.values.tolist()),
        bottom=_tokens(tokenizer, bottom.indices.tolist(), (-bottom.values).tolist()),
        mode="norm" if through_norm else "raw",
        layer=layer,
        concept=vector.concept if isinstance(vector, ConceptVector) else "",
    )


def load_word_list(name: str) -> list[str]:
    """Words of a shipped list (``probes/data/{name}.txt``: one word per line, ``#`` comments).

    Example:
        >>> words = load_word_list("failure_words")  # doctest: +SKIP
    """
    path = DATA_DIR / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in DATA_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no word list {name!r} at {path}; available: {available}")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            words.append(word)
    return words


@dataclass(frozen=True)
class ResolvedWords:
    """A word list mapped to token ids.

    Attributes:
        token_ids: distinct ids, in first-seen order.
        tokens: the decoded token of each id (``" cannot"``, with its leading space).
        whole: words with at least one spelling that is exactly one token (of ``min_chars`` or more
            characters) of this vocabulary.
        not_in_vocabulary: the other words: no spelling is a single token. With ``whole_words=True``
            they contribute nothing; with ``whole_words=False`` they contribute their first tokens.
        whole_words: the rule used (see :func:`resolve_words`).
    """

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    whole: tuple[str, ...]
    not_in_vocabulary: tuple[str, ...]
    whole_words: bool = True

    @property
    def first_token_only(self) -> tuple[str, ...]:
        """Words scored by the first token of a longer encoding (empty unless ``whole_words=False``)."""
        return () if self.whole_words else self.not_in_vocabulary


def _spellings(word: str) -> list[str]:
    forms = [word, word.capitalize()] if word[:1].islower() else [word]
    return [form for base in forms for form in (base, " " + base)]


def _identifier(word: str) -> str | None:
    """CamelCase identifier of a phrase (``"does not exist"`` -> ``"DoesNotExist"``), else None."""
    parts = word.split()
    if len(parts) < 2 or not all(part.isascii() and part.isalpha() for part in parts):
        return None
    return "".join(part[:1].upper() + part[1:] for part in parts)


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def resolve_words(
    tokenizer: Any, words: Iterable[str], *, min_chars: int = 2, whole_words: bool = True
) -> ResolvedWords:
    """Token ids for a word list: the spellings of each word that are whole tokens of the vocabulary.

    Spellings tried: ``w`` and ``" w"``, the same capitalised when ``w`` starts lower case, and for a
    phrase of ASCII words its CamelCase identifier with and without a leading space (``"DoesNotExist"``;
    code tokens like this appear in the paper's v_Mold lens). A token that decodes to fewer than
    ``min_chars`` non-space characters is never used (``"un"`` is kept, ``"u"`` is not): such pieces
    start thousands of unrelated words.

    Args:
        tokenizer: encodes the spellings (``add_special_tokens=False``) and decodes the ids.
        words: the word list (blank entries are skipped).
        min_chars: shortest usable token, in non-space characters.
        whole_words: ``True`` (default): keep only spellings that encode to exactly one token, so every
            id is a whole word of this vocabulary; words with no such spelling are dropped and listed in
            ``not_in_vocabulary``. ``False``: the old rule, the *first* token of every spelling, even
            when the spelling needs several tokens (``"forbidden"`` -> ``"for"``); the CamelCase
            identifier is still taken only when it is a single token (its first piece would repeat
            the capitalised first word). Use it for a tokenizer that holds too few of the words whole.

    Raises:
        LogitLensError: the list is empty, or no spelling yields a usable token (the message names
            the tokenizer and the fix).

    Example:
        >>> resolve_words(tok, ["cannot", "impossibility"]).not_in_vocabulary  # doctest: +SKIP
        ('impossibility',)
    """
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise LogitLensError("the word list is empty")
    ids: list[int] = []
    whole, missing = [], []

    def usable(token_id: int) -> bool:
        return len(tokenizer.decode([token_id]).strip()) >= min_chars

    for word in words:
        single = False
        spellings = [(s, False) for s in _spellings(word)]
        identifier = _identifier(word)
        if identifier is not None:
            spellings += [(identifier, True), (" " + identifier, True)]
        for spelling, whole_only in spellings:
            encoded = [int(i) for i in tokenizer.encode(spelling, add_special_tokens=False)]
            if not encoded or not usable(encoded[0]):
                continue
            if len(encoded) == 1:
                single = True
            elif whole_words or whole_only:
                continue
            if encoded[0] not in ids:
                ids.append(encoded[0])
        (whole if single else missing).append(word)
    if not ids:
        shown = ", ".join(repr(w) for w in words[:8]) + (", ..." if len(words) > 8 else "")
        if whole_words:
            raise LogitLensError(
                f"none of the {len(words)} words ({shown}) is a single token of at least {min_chars} "
                f"characters in the vocabulary of {_tokenizer_name(tokenizer)}: pass words this "
                "tokenizer holds whole, or whole_words=False to score the first token of each word"
            )
        raise LogitLensError(
            f"no word of ({shown}) resolves to a token of at least {min_chars} characters "
            f"with {_tokenizer_name(tokenizer)}: pass other words or a smaller min_chars"
        )
    return ResolvedWords(
        token_ids=tuple(ids),
        tokens=tuple(tokenizer.decode([i]) for i in ids),
        whole=tuple(whole),
        not_in_vocabulary=tuple(missing),
        whole_words=whole_words,
    )


@dataclass(frozen=True)
class FailureScore:
    """How much a direction promotes failure tokens over success tokens (see the module docstring).

    Attributes:
        difference / standardized / auroc: the scores (module docstring).
        n_failure_tokens / n_success_tokens: tokens scored on each side.
        mode: ``"raw"`` or ``"norm"``.
        layer: the vector's layer, when known.
        failure_tokens / success_tokens: the decoded tokens scored (``" cannot"``), in the order of the
            word lists, after dropping tokens the two lists share; show them next to the score.
        failure_ids / success_ids: their ids, same order.
    """

    difference: float
    standardized: float
    auroc: float
    n_failure_tokens: int
    n_success_tokens: int
    mode: Mode
    layer: int | None = None
    failure_tokens: tuple[str, ...] = ()
    success_tokens: tuple[str, ...] = ()
    failure_ids: tuple[int, ...] = ()
    success_ids: tuple[int, ...] = ()


def failure_score(
    model: nn.Module,
    tokenizer: Any,
    vector: ConceptVector | Tensor,
    layer: int | None = None,
    *,
    failure_words: Sequence[str] | None = None,
    success_words: Sequence[str] | None = None,
    through_norm: bool = False,
    whole_words: bool = True,
) -> FailureScore:
    """Failure-minus-success logit-lens score of a direction.

    Args:
        failure_words / success_words: default ``probes/data/failure_words.txt`` /
            ``success_words.txt``. Tokens shared by both lists are dropped from both.
        through_norm: apply the final norm to the vector first (see the module docstring).
        whole_words: resolve words to whole-word tokens only (default); ``False`` uses the first token
            of multi-token words too (see :func:`resolve_words`).

    Raises:
        LogitLensError: a list resolves to no token, or is empty once shared tokens are dropped.

    Example:
        >>> score = failure_score(model, tok, v_mold, 25)  # doctest: +SKIP
        >>> score.auroc, score.failure_tokens[:3]  # doctest: +SKIP
        (0.71, ('cannot', ' cannot', 'Cannot'))
    """
    fail = resolve_words(
        tokenizer,
        failure_words if failure_words is not None else load_word_list("failure_words"),
        whole_words=whole_words,
    )
    good = resolve_words(
        tokenizer,
        success_words if success_words is not None else load_word_list("success_words"),
        whole_words=whole_words,
    )
    shared = set(fail.token_ids) & set(good.token_ids)
    fail_ids = [i for i in fail.token_ids if i not in shared]
    good_ids = [i for i in good.token_ids if i not in shared]
    if not fail_ids or not good_ids:
        raise LogitLensError("after dropping tokens shared by both lists one list is empty")
    direction = _direction(vector, layer)
    if isinstance(vector, ConceptVector) and layer is None:
        layer = vector.layers[0]
    logits = lens_logits(model, direction, through_norm=through_norm).double()
    f, s = logits[fail_ids], logits[good_ids]
    difference = float(f.mean() - s.mean())
    spread = float(logits.std())
    return FailureScore(
        difference=difference,
        standardized=difference / spread if spread > 0 and math.isfinite(spread) else float("nan"),
        auroc=auroc(f, s),
        n_failure_tokens=len(fail_ids),
        n_success_tokens=len(good_ids),
        mode="norm" if through_norm else "raw",
        layer=layer,
        failure_tokens=tuple(tokenizer.decode([i]) for i in fail_ids),
        success_tokens=tuple(tokenizer.decode([i]) for i in good_ids),
        failure_ids=tuple(fail_ids),
        success_ids=tuple(good_ids),
    )


def overlap(a: Sequence[TokenValue], b: Sequence[TokenValue]) -> int:
    """Number of token ids two lists share (the paper: v_Mold-promoted vs v_Gold-suppressed, 5/5)."""
    return len({t.token_id for t in a} & {t.token_id for t in b})
