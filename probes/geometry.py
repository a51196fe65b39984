"""Geometry of the reward vectors: antiparallelism, the Path-reference cosine, centred class means.

Three readouts from the paper (Han, Chalmers, Izmailov 2026, §A.4.1 of the research notes):

- :func:`layer_cosines`: ``c_l = cos(v_Mold^l, v_Gold^l)`` at every layer, summarised as the average, the
  minimum and the layer of the minimum (the paper's "Avg" and "Min (layer)" columns).
- :func:`path_reference_cosines`: ``cos(mu_Mold - mu_Path, mu_Gold - mu_Path)`` per layer (App. C.8, the
  single-reference form; positive at every layer before training).
- :func:`centred_class_cosines`: with ``mu~_c = mu_c - (mu_Mold + mu_Gold + mu_Path)/3`` the pairwise cosines
  of the centred class means at layer ``floor(2L/3)``. Three equidistant classes give ``-0.5`` for
  every pair; after training Mold and Gold become the antipodal pair.

Class activations are passed as ``{class_name: {layer: tensor}}`` where each tensor is either a class
mean ``(d_model,)`` or the class's activations ``(n, d_model)`` (averaged here), or as the
``probes.extract.ClassActivations`` that ``reward_activations`` returns. Class names are matched
case-insensitively (``"mold"``, ``"Mold"``, ``maze_env.Tile.MOLD``).

Example:
    >>> import torch
    >>> means = {"Mold": {0: torch.tensor([1.0, 0.0])}, "Gold": {0: torch.tensor([-1.0, 0.1])},
    ...          "Path": {0: torch.tensor([0.0, 1.0])}}
    >>> round(centred_class_cosines(means, layer=0).pair("Mold", "Gold"), 3)
    -0.818
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from probes.concept_vector import ConceptVector, ConceptVectorError, WidthMismatchError

CLASSES: tuple[str, str, str] = ("Mold", "Gold", "Path")
"""The three tile classes, in the order the paper's tables use."""

ClassMeansLike = Mapping[object, Mapping[int, Tensor]] | Any
"""``{class: {layer: (d_model,) mean or (n, d_model) activations}}``, or a ``probes.extract.ClassActivations``."""

VectorLike = ConceptVector | Mapping[int, Tensor]


class GeometryError(ValueError):
    """Inputs the geometry readouts cannot use (missing class or layer, zero vector, width mismatch)."""


def _class_key(name: object) -> str:
    if hasattr(name, "name") and not isinstance(name, str):  # a Tile enum member
        name = name.name  # type: ignore[union-attr]
    return str(name).strip().lower()


def analysis_layer(n_layers: int, numerator: int = 2, denominator: int = 3) -> int:
    """``floor(numerator * L / denominator)`` clipped to ``0..L-1`` (the paper: 2/3 for geometry, 5/6 for the lens).

    Example:
        >>> analysis_layer(36), analysis_layer(36, 5, 6), analysis_layer(30)
        (24, 30, 20)
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise GeometryError(f"n_layers must be a positive int, got {n_layers!r}")
    if denominator <= 0 or numerator < 0:
        raise GeometryError(f"need numerator >= 0 and denominator > 0, got {numerator}/{denominator}")
    return min(n_layers - 1, (numerator * n_layers) // denominator)


def class_means(activations: ClassMeansLike) -> dict[str, dict[int, Float[Tensor, " d_model"]]]:
    """Normalise class activations to ``{"Mold"|"Gold"|"Path"|other: {layer: float64 mean (d_model,)}}``.

    Raises:
        GeometryError: an empty class, a tensor that is not 1-D/2-D, NaN values, or a width mismatch.
    """
    if not isinstance(activations, Mapping) and isinstance(
        getattr(activations, "activations", None), Mapping
    ):
        activations = activations.activations  # probes.extract.ClassActivations
    if not isinstance(activations, Mapping) or not activations:
        raise GeometryError("class activations are empty: pass {class: {layer: tensor}}")
    canonical = {c.lower(): c for c in CLASSES}
    out: dict[str, dict[int, Tensor]] = {}
    width: int | None = None
    for name, per_layer in activations.items():
        key = _class_key(name)
        label = canonical.get(key, str(name))
        if not isinstance(per_layer, Mapping) or not per_layer:
            raise GeometryError(f"class {label!r} has no layers")
        means: dict[int, Tensor] = {}
        for layer, tensor in per_layer.items():
            t = torch.as_tensor(tensor).detach().to(device="cpu", dtype=torch.float64)
            if t.ndim == 2:
                if t.shape[0] == 0:
                    raise GeometryError(f"class {label!r} has no samples at layer {layer}")
                t = t.mean(dim=0)
            elif t.ndim != 1:
                raise GeometryError(
                    f"class {label!r} layer {layer}: expected (d_model,) or (n, d_model), got {tuple(t.shape)}"
                )
            if not bool(torch.isfinite(t).all()):
                raise GeometryError(f"class {label!r} layer {layer} contains NaN or inf")
            if width is None:
                width = t.shape[0]
            elif t.shape[0] != width:
                raise WidthMismatchError(
                    f"class {label!r} layer {layer} has width {t.shape[0]}, others {width}"
                )
            means[int(layer)] = t
        out[label] = means
    return out


def _directions(vector: VectorLike, what: str) -> dict[int, Tensor]:
    if isinstance(vector, ConceptVector):
        return {layer: vector[layer].detach().double().cpu() for layer in vector.layers}
    if isinstance(vector, Mapping) and vector:
        return {int(k): torch.as_tensor(v).detach().double().cpu().flatten() for k, v in vector.items()}
    raise GeometryError(f"{what} must be a ConceptVector or a non-empty {{layer: tensor}} mapping")


def cosine(a: Float[Tensor, " d_model"], b: Float[Tensor, " d_model"], where: str = "cosine") -> float:
    """cos(a, b) in float64 on the CPU; a zero vector or mismatched widths raise, naming ``where``.

    Example:
        >>> cosine(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0]))
        -1.0
    """
    a, b = a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten()
    if a.shape != b.shape:
        raise WidthMismatchError(f"{where}: widths differ ({a.shape[0]} vs {b.shape[0]})")
    denominator = float(a.norm() * b.norm())
    if denominator == 0.0:
        raise GeometryError(f"{where}: a zero vector has no direction (cosine undefined)")
    return float(a @ b) / denominator


@dataclass(frozen=True)
class LayerCosines:
    """Per-layer cosines between two directions, with the paper's summary statistics.

    Attributes:
        cosines: ``{layer: cosine}`` in layer order.
        label: what was compared, e.g. ``"cos(v_Mold, v_Gold)"``.
    """

    cosines: dict[int, float]
    label: str = ""

    @property
    def layers(self) -> list[int]:
        return sorted(self.cosines)

    @property
    def avg(self) -> float:
        """Mean over layers."""
        return float(sum(self.cosines.values()) / len(self.cosines))

    @property
    def min(self) -> float:
        """Minimum over layers."""
        return float(min(self.cosines.values()))

    @property
    def argmin(self) -> int:
        """Layer of the minimum (the first one on ties)."""
        return min(self.layers, key=lambda layer: (self.cosines[layer], layer))

    @property
    def max(self) -> float:
        return float(max(self.cosines.values()))

    @property
    def argmax(self) -> int:
        return max(self.layers, key=lambda layer: (self.cosines[layer], -layer))

    def first_crossing(self, threshold: float = 0.0) -> int | None:
        """First layer whose cosine is below ``threshold`` after a layer at or above it (None if never)."""
        layers = self.layers
        for previous, layer in zip(layers, layers[1:]):
            if self.cosines[previous] >= threshold > self.cosines[layer]:
                return layer
        return None

    def summary(self) -> dict[str, float | int]:
        """``{"avg", "min", "argmin"}`` as plain numbers."""
        return {"avg": self.avg, "min": self.min, "argmin": self.argmin}

    def __post_init__(self) -> None:
        if not self.cosines:
            raise GeometryError("LayerCosines needs at least one layer")
        clean = {int(k): float(v) for k, v in sorted(self.cosines.items())}
        bad = [k for k, v in clean.items() if not math.isfinite(v)]
        if bad:
            raise GeometryError(f"non-finite cosines at layers {bad}")
        object.__setattr__(self, "cosines", clean)


def layer_cosines(
    v_mold: VectorLike, v_gold: VectorLike, *, label: str = "cos(v_Mold, v_Gold)"
) -> LayerCosines:
    """``cos(v_Mold^l, v_Gold^l)`` at every layer the two vectors share (float64).

    Example:
        >>> import torch
        >>> res = layer_cosines({0: torch.tensor([1.0, 0.0]), 1: torch.tensor([1.0, 1.0])},
        ...                     {0: torch.tensor([-1.0, 0.0]), 1: torch.tensor([1.0, 0.0])})
        >>> res.min, res.argmin, round(res.avg, 4)
        (-1.0, 0, -0.1464)
    """
    if isinstance(v_mold, ConceptVector) and isinstance(v_gold, ConceptVector):
        try:
            v_mold.check_compatible(v_gold, op="compare")
        except ConceptVectorError as error:
            raise GeometryError(str(error)) from error
    a, b = _directions(v_mold, "v_mold"), _directions(v_gold, "v_gold")
    shared = sorted(set(a) & set(b))
    if not shared:
        raise GeometryError(f"the vectors share no layers ({sorted(a)} vs {sorted(b)})")
    return LayerCosines({layer: cosine(a[layer], b[layer], f"layer {layer}") for layer in shared}, label)


def _three(means: dict[str, dict[int, Tensor]], classes: tuple[str, ...]) -> list[dict[int, Tensor]]:
    found = {name.lower(): name for name in means}
    missing = [c for c in classes if c.lower() not in found]
    if missing:
        raise GeometryError(f"missing classes {missing}: got {sorted(means)}")
    return [means[found[c.lower()]] for c in classes]


def path_reference_cosines(activations: ClassMeansLike) -> LayerCosines:
    """``cos(mu_Mold - mu_Path, mu_Gold - mu_Path)`` per layer (the single-reference form, App. C.8).

    Example:
        >>> import torch
        >>> acts = {c: {0: torch.tensor(x)} for c, x in
        ...         [("Mold", [2.0, 1.0]), ("Gold", [1.0, 2.0]), ("Path", [1.0, 1.0])]}
        >>> path_reference_cosines(acts).cosines
        {0: 0.0}
    """
    mold, gold, path = _three(class_means(activations), CLASSES)
    shared = sorted(set(mold) & set(gold) & set(path))
    if not shared:
        raise GeometryError("the three classes share no layers")
    return LayerCosines(
        {
            layer: cosine(mold[layer] - path[layer], gold[layer] - path[layer], f"layer {layer}")
            for layer in shared
        },
        "cos(mu_Mold - mu_Path, mu_Gold - mu_Path)",
    )


@dataclass(frozen=True)
class CentredGeometry:
    """Pairwise cosines of centred class means at one layer.

    Attributes:
        layer: the layer (``floor(2L/3)`` by default).
        classes: class names, in matrix order.
        cosines: ``(n_classes, n_classes)`` float64 matrix of ``cos(mu~_a, mu~_b)`` (ones on the diagonal).
        norms: ``||mu~_c||`` per class.
    """

    layer: int
    classes: tuple[str, ...]
    cosines: Float[Tensor, "n_classes n_classes"]
    norms: tuple[float, ...]

    def pair(self, a: str, b: str) -> float:
        """The cosine between two classes (names case-insensitive)."""
        lower = [c.lower() for c in self.classes]
        try:
            i, j = lower.index(a.lower()), lower.index(b.lower())
        except ValueError:
            raise KeyError(f"unknown class in ({a!r}, {b!r}); classes are {list(self.classes)}") from None
        return float(self.cosines[i, j])

    def pairs(self) -> dict[str, float]:
        """``{"Mold·Gold": ..., "Mold·Path": ..., "Gold·Path": ...}`` (upper triangle, class order)."""
        out = {}
        for i, a in enumerate(self.classes):
            for b in self.classes[i + 1 :]:
                out[f"{a}·{b}"] = self.pair(a, b)
        return out


def centred_class_cosines(
    activations: ClassMeansLike,
    layer: int | None = None,
    *,
    n_layers: int | None = None,
    classes: tuple[str, ...] = CLASSES,
) -> CentredGeometry:
    """Pairwise cosines of ``mu~_c = mu_c - mean_c' mu_c'`` at ``layer`` (default ``floor(2L/3)``).

    Args:
        activations: ``{class: {layer: mean or activations}}`` for at least the listed classes.
        layer: the layer; default ``analysis_layer(n_layers)``.
        n_layers: the model's ``L``, needed only when ``layer`` is None; default: highest layer + 1
            present in the activations (pass it when the activations do not cover every layer).
        classes: which classes to centre over (the paper: Mold, Gold, Path).

    Raises:
        GeometryError: a missing class or layer, or a class mean equal to the centre (zero vector).
    """
    means = class_means(activations)
    per_class = _three(means, classes)
    shared = sorted(set.intersection(*(set(m) for m in per_class)))
    if not shared:
        raise GeometryError("the classes share no layers")
    if layer is None:
        layer = analysis_layer(n_layers if n_layers is not None else max(shared) + 1)
    if layer not in shared:
        raise GeometryError(f"layer {layer} is not in the activations; available layers: {shared}")
    stacked = torch.stack([m[layer] for m in per_class])  # (n_classes, d_model)
    centred = stacked - stacked.mean(dim=0, keepdim=True)
    norms = centred.norm(dim=1)
    if bool((norms == 0).any()):
        zero = [c for c, n in zip(classes, norms.tolist()) if n == 0]
        raise GeometryError(f"centred means of {zero} are zero at layer {layer}: cosine undefined")
    unit = centred / norms[:, None]
    return CentredGeometry(
        layer=int(layer),
        classes=tuple(c.title() if c.lower() in {x.lower() for x in CLASSES} else c for c in classes),
        cosines=unit @ unit.T,
        norms=tuple(float(n) for n in norms),
    )
