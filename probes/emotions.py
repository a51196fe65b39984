"""Emotion vectors (the Sofroniew et al. 2026 recipe) and their alignment with the reward vectors.

Recipe (research notes §A.4.3 and §B.1), on the shipped data (``probes/data/emotions.jsonl``: emotion,
valence, arousal, a short story that never names the emotion; ``probes/data/neutral.jsonl``: neutral
texts):

1. **Story-mean activations.** Each story is tokenized on its own (no chat template) and the residual
   stream is averaged over its tokens from ``token_offset`` on. Sofroniew et al. average from the 50th
   token of stories that are several hundred tokens long. Our stories are one paragraph (~60-90
   tokens), so the default offset is 1: it drops only the first token, whose residual norm in most LMs
   is far larger than any other's (an attention sink) and would dominate the mean. A story with at
   most ``token_offset`` tokens uses all of its tokens (counted in ``n_short``). ``token_offset=50``
   reproduces the paper's rule.
2. **Emotion vector** ``v_e = mean(stories of e) - mean(stories of every other emotion)`` (pooled), per
   layer, as in the welfare paper ("minus the mean over the other 170 emotions' stories").
3. **Denoising.** The neutral texts get the same story-mean activations; after centring, their top
   principal components are taken until they explain ``variance`` (default 50%) of the neutral
   variance, and those components are projected out of every emotion vector:
   ``v <- v - C^T C v`` with orthonormal rows ``C``.

Readouts:

- :func:`valence_axis`: PCA of the (denoised) emotion vectors at a layer; PC1 is signed so that the
  positive-valence emotions project higher than the negative ones, and its Pearson correlation with
  the shipped valence ratings is reported (and PC2's with arousal). Sofroniew et al.: PC1 ~ valence,
  r = 0.81 against human ratings.
- :func:`emotion_scatter`: ``x = cos(e, v_Mold)``, ``y = cos(e, v_Gold)`` for every emotion at one layer,
  with the OLS slope of y on x and Pearson r (the paper: slope ~ -1 after training, a cloud before).

Example:
    >>> import torch
    >>> acts = {0: torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])}
    >>> ev = emotion_vectors_from_activations(acts, ["joy", "joy", "fear", "fear"])
    >>> ev.vectors[0]
    tensor([[ 2., -2.],
            [-2.,  2.]], dtype=torch.float64)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes import layers as _layers
from probes.concept_vector import ConceptVector, WidthMismatchError, dataset_hash
from probes.ols import ols_slope
from probes.record import capture

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_TOKEN_OFFSET = 1
"""Tokens skipped at the start of each story (see the module docstring; Sofroniew et al. use 50)."""


class EmotionError(ValueError):
    """Bad emotion-vector input: too few emotions, unknown emotion, missing layer, bad variance."""


@dataclass(frozen=True)
class EmotionStory:
    """One row of ``emotions.jsonl``."""

    emotion: str
    valence: float
    arousal: float
    story: str


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the shipped data lives in {DATA_DIR}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_emotion_stories(path: str | Path | None = None) -> list[EmotionStory]:
    """The shipped emotion stories (or a JSONL file with the same fields)."""
    rows = _read_jsonl(Path(path) if path is not None else DATA_DIR / "emotions.jsonl")
    try:
        return [
            EmotionStory(str(r["emotion"]), float(r["valence"]), float(r["arousal"]), str(r["story"]))
            for r in rows
        ]
    except KeyError as error:
        raise EmotionError(f"emotion rows need emotion, valence, arousal, story; missing {error}") from error


def load_neutral_texts(path: str | Path | None = None) -> list[str]:
    """The shipped neutral texts (``{"text": ...}`` per line)."""
    rows = _read_jsonl(Path(path) if path is not None else DATA_DIR / "neutral.jsonl")
    return [str(r["text"]) for r in rows]


def subset_stories(
    stories: list[EmotionStory], n_emotions: int | None, per_emotion: int | None
) -> list[EmotionStory]:
    """``n_emotions`` evenly spaced through the file (spanning its valence range), ``per_emotion`` stories each
    (None: all), in file order; the report and the checkpoint series use the same subset."""
    names = list(dict.fromkeys(story.emotion for story in stories))
    if n_emotions is not None and n_emotions < len(names):  # evenly spaced: spans the file's valence range
        names = [names[int(i)] for i in np.linspace(0, len(names) - 1, n_emotions).round()]
    counts: dict[str, int] = {}
    out = []
    for story in stories:
        if story.emotion in names and (per_emotion is None or counts.get(story.emotion, 0) < per_emotion):
            counts[story.emotion] = counts.get(story.emotion, 0) + 1
            out.append(story)
    return out


def story_mean_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: int | Sequence[int] | str = "all",
    *,
    token_offset: int = DEFAULT_TOKEN_OFFSET,
    batch_size: int = 8,
) -> tuple[dict[int, Float[Tensor, "n d_model"]], int]:
    """Mean residual activation of each text over its tokens from ``token_offset`` on.

    Returns:
        ``({layer: (n, d_model)}, n_short)``: texts with at most ``token_offset`` tokens use all their
        tokens; ``n_short`` counts them.
    """
    if isinstance(token_offset, bool) or not isinstance(token_offset, int) or token_offset < 0:
        raise EmotionError(f"token_offset must be a non-negative int, got {token_offset!r}")
    texts = list(texts)
    if not texts:
        raise EmotionError("no texts")
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    long_rows = [i for i, n in enumerate(lengths) if n > token_offset]
    short_rows = [i for i, n in enumerate(lengths) if n <= token_offset]
    out: dict[int, Tensor] = {}
    for rows, position in ((long_rows, slice(token_offset, None)), (short_rows, "all")):
        if not rows:
            continue
        got = capture(
            model,
            tokenizer,
            [texts[i] for i in rows],
            layers=layers,
            position=position,
            reduce="mean",
            batch_size=batch_size,
        )
        for layer, tensor in got.items():
            if layer not in out:
                out[layer] = torch.empty(len(texts), tensor.shape[1], dtype=tensor.dtype)
            out[layer][rows] = tensor
    return out, len(short_rows)


def neutral_components(
    neutral: Float[Tensor, "n d_model"], variance: float = 0.5
) -> Float[Tensor, "k d_model"]:
    """Orthonormal top principal components of the centred ``neutral`` rows explaining ``variance``.

    ``k`` is the smallest number whose cumulative explained variance ratio reaches ``variance``;
    ``variance=0`` returns no components.
    """
    if not 0.0 <= variance < 1.0:
        raise EmotionError(f"variance must be in [0, 1), got {variance}")
    x = torch.as_tensor(neutral).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise EmotionError(f"need >= 2 neutral rows (n, d_model), got shape {tuple(x.shape)}")
    if variance == 0.0:
        return x.new_zeros(0, x.shape[1])
    centred = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ratio = (s**2) / (s**2).sum()
    k = int(torch.searchsorted(torch.cumsum(ratio, 0), torch.tensor(variance, dtype=ratio.dtype)).item()) + 1
    return vh[: min(k, vh.shape[0])]


def project_out(x: Float[Tensor, "... d_model"], components: Float[Tensor, "k d_model"]) -> Tensor:
    """``x - (x C^T) C`` for orthonormal rows ``C``."""
    c = components.to(dtype=x.dtype)
    if c.shape[0] == 0:
        return x.clone()
    return x - (x @ c.T) @ c


@dataclass(frozen=True)
class EmotionVectors:
    """One vector per emotion and layer.

    Attributes:
        emotions: emotion names, in row order.
        vectors: ``{layer: (n_emotions, d_model)}`` denoised vectors (float64).
        raw: ``{layer: (n_emotions, d_model)}`` before denoising.
        n_components_removed: ``{layer: k}`` neutral PCs projected out.
        valence, arousal: ``(n_emotions,)`` ratings (NaN when unknown).
        token_offset: story-mean offset used; n_short: stories that fell back to all tokens.
        model_name, model_family, model_dtype: provenance.
    """

    emotions: tuple[str, ...]
    vectors: dict[int, Tensor]
    raw: dict[int, Tensor]
    n_components_removed: dict[int, int]
    valence: np.ndarray = field(repr=False)
    arousal: np.ndarray = field(repr=False)
    token_offset: int = DEFAULT_TOKEN_OFFSET
    n_short: int = 0
    model_name: str = ""
    model_family: str = ""
    model_dtype: str = ""

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def _layer(self, layer: int) -> Tensor:
        if layer not in self.vectors:
            raise EmotionError(f"layer {layer} not computed; layers are {self.layers}")
        return self.vectors[layer]

    def index(self, emotion: str) -> int:
        try:
            return self.emotions.index(emotion)
        except ValueError:
            raise KeyError(f"unknown emotion {emotion!r}; known: {list(self.emotions)}") from None

    def vector(self, emotion: str) -> ConceptVector:
        """The emotion's (denoised) vector at every layer as a ConceptVector."""
        i = self.index(emotion)
        return ConceptVector(
            {layer: v[i].float() for layer, v in self.vectors.items()},
            model_name=self.model_name,
            model_family=self.model_family,
            model_dtype=self.model_dtype,
            position=f"story_mean:{self.token_offset}",
            method="emotion_minus_others_denoised",
            concept=emotion,
        )

    def cosines(self, vector: ConceptVector | Tensor, layer: int) -> np.ndarray:
        """``(n_emotions,)`` cosine of every emotion vector with ``vector`` at ``layer``."""
        v = vector[layer] if isinstance(vector, ConceptVector) else torch.as_tensor(vector)
        e = self._layer(layer)
        v = v.detach().cpu().double()
        if v.shape != (e.shape[1],):
            raise WidthMismatchError(f"vector has shape {tuple(v.shape)}, emotion vectors width {e.shape[1]}")
        denominator = e.norm(dim=1) * v.norm()
        if bool((denominator == 0).any()):
            raise EmotionError(f"a zero vector at layer {layer}: cosine undefined")
        return ((e @ v) / denominator).numpy()


def emotion_vectors_from_activations(
    activations: Mapping[int, Float[Tensor, "n_stories d_model"]],
    emotions: Sequence[str],
    *,
    neutral: Mapping[int, Float[Tensor, "n_neutral d_model"]] | None = None,
    variance: float = 0.5,
    valence: Mapping[str, float] | None = None,
    arousal: Mapping[str, float] | None = None,
    **provenance: Any,
) -> EmotionVectors:
    """Emotion-minus-others vectors from story activations, denoised with neutral PCs when given.

    Args:
        activations: ``{layer: (n_stories, d_model)}`` story-mean activations.
        emotions: the emotion of each story (row order).
        neutral: ``{layer: (n_neutral, d_model)}``; ``None`` skips denoising.
        variance: neutral variance explained by the removed PCs.
        valence, arousal: ratings per emotion.
        provenance: ``token_offset``, ``n_short``, ``model_name``, ``model_family``, ``model_dtype``.
    """
    names = list(dict.fromkeys(emotions))
    if len(names) < 2:
        raise EmotionError(f"need stories of at least 2 emotions, got {names}")
    labels = np.asarray(emotions)
    vectors, raw, removed = {}, {}, {}
    for layer, acts in activations.items():
        x = torch.as_tensor(acts).double().cpu()
        if x.shape[0] != labels.shape[0]:
            raise EmotionError(f"layer {layer}: {x.shape[0]} activation rows for {labels.shape[0]} stories")
        if not bool(torch.isfinite(x).all()):
            raise EmotionError(f"layer {layer}: activations contain NaN or inf")
        rows = []
        for name in names:
            mine = torch.as_tensor(labels == name)
            rows.append(x[mine].mean(0) - x[~mine].mean(0))
        v = torch.stack(rows)  # (n_emotions, d_model)
        raw[layer] = v
        if neutral is not None:
            if layer not in neutral:
                raise EmotionError(f"no neutral activations at layer {layer}")
            components = neutral_components(neutral[layer], variance)
            if components.shape[1] != v.shape[1]:
                raise WidthMismatchError(f"neutral width {components.shape[1]} != story width {v.shape[1]}")
            v = project_out(v, components)
            removed[layer] = int(components.shape[0])
        else:
            removed[layer] = 0
        vectors[layer] = v
    nan = float("nan")
    return EmotionVectors(
        emotions=tuple(names),
        vectors=vectors,
        raw=raw,
        n_components_removed=removed,
        valence=np.array([float((valence or {}).get(n, nan)) for n in names]),
        arousal=np.array([float((arousal or {}).get(n, nan)) for n in names]),
        **provenance,
    )


def emotion_vectors(
    model: nn.Module,
    tokenizer: Any,
    layers: int | Sequence[int] | str = "all",
    *,
    stories: Sequence[EmotionStory] | None = None,
    neutral_texts: Sequence[str] | None = None,
    token_offset: int = DEFAULT_TOKEN_OFFSET,
    variance: float = 0.5,
    denoise: bool = True,
    batch_size: int = 8,
) -> EmotionVectors:
    """The full recipe on a model: story means, emotion-minus-others, neutral-PC denoising.

    Example:
        >>> ev = emotion_vectors(model, tok, layers=[20])  # doctest: +SKIP
        >>> ev.emotions[:3], ev.vectors[20].shape  # doctest: +SKIP
    """
    stories = list(stories) if stories is not None else load_emotion_stories()
    if not stories:
        raise EmotionError("no emotion stories")
    acts, n_short = story_mean_activations(
        model, tokenizer, [s.story for s in stories], layers, token_offset=token_offset, batch_size=batch_size
    )
    neutral = None
    if denoise:
        texts = list(neutral_texts) if neutral_texts is not None else load_neutral_texts()
        neutral, short = story_mean_activations(
            model, tokenizer, texts, layers, token_offset=token_offset, batch_size=batch_size
        )
        n_short += short
    return emotion_vectors_from_activations(
        acts,
        [s.emotion for s in stories],
        neutral=neutral,
        variance=variance,
        valence={s.emotion: s.valence for s in stories},
        arousal={s.emotion: s.arousal for s in stories},
        token_offset=token_offset,
        n_short=n_short,
        model_name=_layers.model_name(model),
        model_family=_layers.model_family(model),
        model_dtype=_layers.model_dtype(model),
    )


def stories_hash(stories: Sequence[EmotionStory]) -> str:
    """sha256 of the stories (for provenance)."""
    return dataset_hash([f"{s.emotion}\t{s.story}" for s in stories])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


@dataclass(frozen=True)
class ValenceAxis:
    """PCA of the emotion vectors at one layer.

    Attributes:
        layer: the layer.
        pc1, pc2: unit directions ``(d_model,)`` (float64); PC1 signed so positive-valence emotions
            project higher.
        explained: fraction of the emotion-vector variance explained by PC1 and PC2.
        scores: ``(n_emotions, 2)`` projections of the centred emotion vectors on PC1, PC2.
        r_valence: Pearson r of PC1 scores with the valence ratings.
        r_arousal: Pearson r of PC2 scores with the arousal ratings (PC2 sign: positive r).
        emotions: row order of ``scores``.
    """

    layer: int
    pc1: Tensor
    pc2: Tensor
    explained: tuple[float, float]
    scores: np.ndarray
    r_valence: float
    r_arousal: float
    emotions: tuple[str, ...]

    def as_vector(self, **provenance: Any) -> ConceptVector:
        """PC1 as a one-layer ConceptVector (unit norm)."""
        return ConceptVector(
            {self.layer: self.pc1.float()}, method="emotion_pc1", concept="valence_pc1", **provenance
        )


def valence_axis(ev: EmotionVectors, layer: int) -> ValenceAxis:
    """Emotion PC1 (valence) and PC2 at ``layer``, signed by the valence/arousal ratings."""
    v = ev._layer(layer)
    if v.shape[0] < 3:
        raise EmotionError("need at least 3 emotions for a PCA")
    centred = v - v.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ratio = (s**2) / (s**2).sum()
    pc1, pc2 = vh[0].clone(), vh[1].clone()
    scores = (centred @ torch.stack([pc1, pc2]).T).numpy()
    positive, negative = ev.valence > 0, ev.valence < 0
    if positive.any() and negative.any():
        flip = scores[positive, 0].mean() < scores[negative, 0].mean()
    else:
        flip = _pearson(scores[:, 0], ev.valence) < 0
    if flip:
        pc1, scores[:, 0] = -pc1, -scores[:, 0]
    if _pearson(scores[:, 1], ev.arousal) < 0:
        pc2, scores[:, 1] = -pc2, -scores[:, 1]
    return ValenceAxis(
        layer=layer,
        pc1=pc1,
        pc2=pc2,
        explained=(float(ratio[0]), float(ratio[1])),
        scores=scores,
        r_valence=_pearson(scores[:, 0], ev.valence),
        r_arousal=_pearson(scores[:, 1], ev.arousal),
        emotions=ev.emotions,
    )


@dataclass(frozen=True)
class EmotionScatter:
    """Cosines of every emotion vector with v_Mold (x) and v_Gold (y) at one layer, and the OLS fit.

    Attributes:
        slope, intercept: OLS fit of y on x.
        r: Pearson correlation of x and y.
    """

    layer: int
    emotions: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    slope: float
    intercept: float
    r: float
    x_label: str = "cos(e, v_Mold)"
    y_label: str = "cos(e, v_Gold)"

    def top(self, axis: str = "y", k: int = 5, *, largest: bool = True) -> list[tuple[str, float]]:
        """The ``k`` emotions with the largest (or smallest) cosine on ``axis`` ("x" or "y")."""
        values = self.x if axis == "x" else self.y
        order = np.argsort(-values if largest else values, kind="stable")[:k]
        return [(self.emotions[i], float(values[i])) for i in order]


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(slope, intercept, r)`` of the least-squares line of y on x.

    Example:
        >>> [round(v, 6) for v in ols(np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, -3.0]))]
        [-2.0, 1.0, -1.0]
    """
    try:
        fit = ols_slope(x, y)
    except ValueError as err:
        raise EmotionError(f"emotion-scatter line: {err}") from None
    return fit.slope, fit.intercept, fit.r


def emotion_scatter(
    ev: EmotionVectors, v_mold: ConceptVector, v_gold: ConceptVector, layer: int
) -> EmotionScatter:
    """``cos(e, v_Mold)`` vs ``cos(e, v_Gold)`` over the emotions at ``layer``, with the OLS line."""
    x, y = ev.cosines(v_mold, layer), ev.cosines(v_gold, layer)
    slope, intercept, r = ols(x, y)
    return EmotionScatter(layer, ev.emotions, x, y, slope, intercept, r)
