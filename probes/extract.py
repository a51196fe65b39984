"""From texts to concept vectors: ``extract_activations → aggregate → ConceptVector``.

Each step is public so a notebook can stop anywhere:

1. :func:`extract_activations` — activations of a list of texts/chats (``probes.record.capture``).
2. :func:`extract_class_activations` — the same for several classes at once, kept with provenance
   (:class:`ClassActivations`; ``split`` gives held-out samples for layer selection).
3. :func:`aggregate` — one :class:`~probes.concept_vector.ConceptVector` per class with an aggregator
   from ``probes.aggregators``.

:func:`train_concept_vectors` chains them. :func:`reward_vectors` is the paper's §A.3 recipe: scripted
maze trajectories per tile class (``maze_env.scripted_trajectories``), rendered with
``maze_env.render_chat(..., close_final=False)`` so the last token is the final direction letter, read
at position −1 of every block output, aggregated one-vs-rest (Eq. 1:
``v_Mold = μ_Mold − μ_{Gold ∪ Path}``, and likewise ``v_Gold``, ``v_Path``).

Control vectors ``u`` are nothing special: run :func:`reward_vectors` on the untrained (maze-naive)
model with the same arguments; checkpoints that share a base model share their controls.

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> vectors = reward_vectors(model, tok, n_per_class=8, config=MazeConfig(size=30))  # doctest: +SKIP
    >>> sorted(vectors), vectors["Mold"].n_per_class  # doctest: +SKIP
    (['Gold', 'Mold', 'Path'], {'Gold': 8, 'Mold': 8, 'Path': 8})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

import maze_env
from probes import activation_cache as _cache
from probes import layers as _layers
from probes import positions as _positions
from probes.aggregators import Aggregator, resolve
from probes.concept_vector import ConceptVector
from probes.positions import Message, Position
from probes.record import Backend, capture

REWARD_CLASSES: tuple[str, ...] = ("Mold", "Gold", "Path")
PAPER_SEED = 474747


class ExtractionError(ValueError):
    """Bad extraction input: empty class, no classes, NaN activations, mismatched sets."""


def _render(tokenizer: Any, item: str | Sequence[Message], close_final: bool) -> str:
    if isinstance(item, str):
        return item
    return _positions.render_messages(tokenizer, item, close_final=close_final)


def classes_hash(rendered_by_class: Mapping[str, Sequence[str]]) -> str:
    """sha256 over class names and their rendered texts (order-sensitive, boundary-safe)."""
    digest = hashlib.sha256()
    for name in sorted(rendered_by_class):
        texts = rendered_by_class[name]
        for chunk in (name, *texts):
            data = chunk.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        digest.update(b"\x00class-end")
    return digest.hexdigest()


def extract_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Sequence[Sequence[Message]],
    *,
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    position: Position = "last",
    close_final: bool = False,
    batch_size: int = 16,
    backend: Backend = "hooks",
    progress: bool = False,
) -> dict[int, Float[Tensor, "n d_model"]]:
    """Activations ``{layer: (n, d_model)}`` of ``texts`` (strings, or chats rendered with the template).

    Defaults follow the paper: block outputs (``resid_post``) at the last token, chats left open after
    a final assistant message (``close_final=False``).
    """
    return capture(
        model,
        tokenizer,
        texts,
        layers=layers,
        site=site,
        position=position,
        batch_size=batch_size,
        backend=backend,
        close_final=close_final,
        progress=progress,
    )


@dataclass(frozen=True)
class ClassActivations:
    """Activations by class and layer, plus where they came from.

    Attributes:
        activations: ``{class: {layer: (n_class, d_model)}}`` (float32, CPU).
        model_name, model_family, model_dtype, site, position: as in ``ConceptVector``.
        dataset_hash: :func:`classes_hash` of the rendered texts.
        metadata: extras copied into every vector (seed, maze config, ...).
    """

    activations: dict[str, dict[int, Tensor]]
    model_name: str = "unknown"
    model_family: str = ""
    model_dtype: str = ""
    site: str = "resid_post"
    position: str = "last"
    dataset_hash: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.activations:
            raise ExtractionError("no classes")
        layer_sets = {name: sorted(by_layer) for name, by_layer in self.activations.items()}
        first = next(iter(layer_sets.values()))
        for name, layer_list in layer_sets.items():
            if layer_list != first:
                raise ExtractionError(f"class {name!r} has layers {layer_list}, others {first}")
            sizes = {by_layer.shape[0] for by_layer in self.activations[name].values()}
            if sizes == {0}:
                raise ExtractionError(f"class {name!r} is empty")

    @property
    def classes(self) -> list[str]:
        return list(self.activations)

    @property
    def layers(self) -> list[int]:
        return sorted(next(iter(self.activations.values())))

    @property
    def n_per_class(self) -> dict[str, int]:
        return {
            name: int(next(iter(by_layer.values())).shape[0]) for name, by_layer in self.activations.items()
        }

    def at_layer(self, layer: int) -> dict[str, Float[Tensor, "n d_model"]]:
        """``{class: (n_class, d_model)}`` at one layer."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted; layers are {self.layers}")
        return {name: by_layer[layer] for name, by_layer in self.activations.items()}

    def split(
        self, held_out: float = 0.2, *, seed: int = 0, matched: bool = True, strata: int = 4
    ) -> tuple[ClassActivations, ClassActivations]:
        """Split into (train, held-out); both keep the provenance.

        ``matched=True`` (the default) holds out **the same indices in every class**, drawn evenly from each
        residue ``i % strata``. The scripted design (``maze_env.scripted``) pairs sample ``i`` of every class
        (the same step count ``1 + i % 15`` and final letter ``i % 4``), so this keeps the classes matched
        and each part's final letters balanced (``strata=4``). ``matched=False`` splits each class on its own
        at random, as before: the parts then have unequal letters, which moves Eq. 1's cosine by far more
        than its noise (measured on the untrained SmolLM2: −0.125 vs −0.862 on the same data).
        """
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {held_out}")
        sizes = {name: next(iter(by_layer.values())).shape[0] for name, by_layer in self.activations.items()}
        for name, n in sizes.items():
            n_test = int(round(n * held_out))
            if n_test < 1 or n - n_test < 1:
                raise ExtractionError(
                    f"class {name!r} has {n} samples: too few to split with held_out={held_out}"
                )
        generator = torch.Generator().manual_seed(seed)
        if matched:
            if len(set(sizes.values())) != 1:
                raise ExtractionError(
                    f"a matched split needs classes of one size, got {sizes}; extract the same number per class "
                    "(the scripted design does) or pass matched=False"
                )
            n = next(iter(sizes.values()))
            test_idx = _stratified_indices(n, int(round(n * held_out)), strata, generator)
            chosen = {name: test_idx for name in sizes}
        else:
            chosen = {}
            for name, n in sizes.items():
                chosen[name] = torch.randperm(n, generator=generator)[: int(round(n * held_out))]
        train: dict[str, dict[int, Tensor]] = {}
        test: dict[str, dict[int, Tensor]] = {}
        for name, by_layer in self.activations.items():
            keep = torch.ones(sizes[name], dtype=torch.bool)
            keep[chosen[name]] = False
            train_idx, test_idx = keep.nonzero().flatten(), chosen[name].sort().values
            train[name] = {layer: acts[train_idx] for layer, acts in by_layer.items()}
            test[name] = {layer: acts[test_idx] for layer, acts in by_layer.items()}
        meta = {**self.metadata, "split": {"held_out": held_out, "seed": seed, "matched": matched}}
        common = dict(
            model_name=self.model_name,
            model_family=self.model_family,
            model_dtype=self.model_dtype,
            site=self.site,
            position=self.position,
            dataset_hash=self.dataset_hash,
        )
        return (
            ClassActivations(train, metadata={**meta, "part": "train"}, **common),
            ClassActivations(test, metadata={**meta, "part": "held_out"}, **common),
        )


def _stratified_indices(n: int, k: int, strata: int, generator: torch.Generator) -> Tensor:
    """``k`` of ``range(n)`` drawn as evenly as possible from each residue class ``i % strata`` (seeded)."""
    groups = [torch.arange(r, n, strata) for r in range(strata)]
    base, extra = divmod(k, strata)
    order = torch.randperm(strata, generator=generator).tolist()  # which residues take the remainder
    picks = []
    for rank, r in enumerate(order):
        want = min(base + (rank < extra), len(groups[r]))
        picks.append(groups[r][torch.randperm(len(groups[r]), generator=generator)[:want]])
    return torch.cat(picks).sort().values


def extract_class_activations(
    model: nn.Module,
    tokenizer: Any,
    texts_by_class: Mapping[str, Sequence[str] | Sequence[Sequence[Message]]],
    *,
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    position: Position = "last",
    close_final: bool = False,
    batch_size: int = 16,
    backend: Backend = "hooks",
    progress: bool = False,
    metadata: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClassActivations:
    """Activations of every class in one batched pass (texts of all classes share batches).

    ``cache_dir``: reuse (or store) the activations there, keyed by the model's weights, the rendered texts
    and the capture settings (``probes.activation_cache``); a hit returns exactly what the capture would.
    """
    if not texts_by_class:
        raise ExtractionError("texts_by_class is empty: pass {class_name: [texts or chats]}")
    for name, items in texts_by_class.items():
        if isinstance(items, str) or len(items) == 0:
            raise ExtractionError(f"class {name!r} is empty (or a single string): give it a list of texts")
    rendered = {
        name: [_render(tokenizer, item, close_final) for item in items]
        for name, items in texts_by_class.items()
    }
    names = list(texts_by_class)
    dataset_hash = classes_hash(rendered)

    def compute() -> dict[str, dict[int, Tensor]]:
        flat: list[Any] = [item for name in names for item in texts_by_class[name]]
        acts = extract_activations(
            model,
            tokenizer,
            flat,
            layers=layers,
            site=site,
            position=position,
            batch_size=batch_size,
            backend=backend,
            close_final=close_final,
            progress=progress,
        )
        out: dict[str, dict[int, Tensor]] = {}
        start = 0
        for name in names:
            count = len(texts_by_class[name])
            out[name] = {layer: rows[start : start + count] for layer, rows in acts.items()}
            start += count
        return out

    if cache_dir is not None and _cache.cacheable(model, backend, position):
        parts = {
            "classes": names,
            "texts": dataset_hash,
            "tokenizer": _cache.tokenizer_fingerprint(tokenizer, next(iter(rendered.values()))[0]),
            "layers": _layers.check_layers(model, layers),
            "site": site,
            "position": _positions.describe(position),
            "close_final": close_final,
            "batch_size": batch_size,
        }
        by_class = _cache.cached_class_activations(cache_dir, model, parts, compute, progress=progress)
    else:
        by_class = compute()
    base = model.original_model if hasattr(model, "original_model") else model
    base = getattr(base, "_module", base)  # nnsight / probes.remote models: the (meta) HF module
    return ClassActivations(
        by_class,
        model_name=_layers.model_name(base),
        model_family=_layers.model_family(base),
        model_dtype=_layers.model_dtype(base),
        site=site,
        position=_positions.describe(position),
        dataset_hash=dataset_hash,
        metadata=dict(metadata or {}),
    )


def aggregate(
    class_activations: ClassActivations,
    method: str | Aggregator = "mean_diff",
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, ConceptVector]:
    """One ConceptVector per class, per layer, with ``method``.

    By default every class is a target, except the reference class of a single-reference aggregator
    (``μ_Path − μ_Path`` is not a direction).
    """
    aggregator = resolve(method)
    reference = getattr(aggregator, "ref", None)
    if classes is not None:
        targets = list(classes)
    else:
        targets = [name for name in class_activations.classes if name != reference]
    unknown = [name for name in targets if name not in class_activations.activations]
    if unknown:
        raise ExtractionError(f"unknown classes {unknown}; extracted classes are {class_activations.classes}")
    out: dict[str, ConceptVector] = {}
    for target in targets:
        directions = {
            layer: aggregator(class_activations.at_layer(layer), target) for layer in class_activations.layers
        }
        out[target] = ConceptVector(
            directions,
            model_name=class_activations.model_name,
            model_family=class_activations.model_family,
            model_dtype=class_activations.model_dtype,
            site=class_activations.site,
            position=class_activations.position,
            method=aggregator.name,
            dataset_hash=class_activations.dataset_hash,
            n_per_class=class_activations.n_per_class,
            concept=target,
            metadata=dict(class_activations.metadata),
        )
    return out


def train_concept_vectors(
    model: nn.Module,
    tokenizer: Any,
    trajectories_by_class: Mapping[str, Sequence[str] | Sequence[Sequence[Message]]],
    *,
    method: str | Aggregator = "mean_diff",
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    position: Position = "last",
    close_final: bool = False,
    batch_size: int = 16,
    backend: Backend = "hooks",
    progress: bool = False,
    metadata: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, ConceptVector]:
    """``extract_class_activations`` then ``aggregate``: a ConceptVector per class (``cache_dir``: reuse the
    activations of an identical capture, as in :func:`extract_class_activations`).

    With the default one-vs-rest ``mean_diff`` and classes Mold/Gold/Path this is the paper's Eq. 1.

    Example:
        >>> vecs = train_concept_vectors(model, tok, {"Mold": mold_chats, "Gold": gold_chats,  # doctest: +SKIP
        ...                                           "Path": path_chats})
        >>> vecs["Mold"].norms()  # doctest: +SKIP
    """
    class_activations = extract_class_activations(
        model,
        tokenizer,
        trajectories_by_class,
        layers=layers,
        site=site,
        position=position,
        close_final=close_final,
        batch_size=batch_size,
        backend=backend,
        progress=progress,
        metadata=metadata,
        cache_dir=cache_dir,
    )
    return aggregate(class_activations, method)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def reward_trajectories(
    n_per_class: int, *, config: Any = None, seed: int = PAPER_SEED, mold_reversal: bool = False
) -> dict[str, list[list[Message]]]:
    """Scripted chats per tile class (``maze_env.scripted_trajectories``; same seeds for each class).

    ``mold_reversal``: Mold trajectories may end by stepping back onto the tile just left (melted); see
    ``maze_env.scripted`` for why the default forbids it.
    """

    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ExtractionError(f"n_per_class must be a positive int, got {n_per_class!r}")
    out: dict[str, list[list[Message]]] = {}
    for name in REWARD_CLASSES:
        trajectories = maze_env.scripted_trajectories(
            name, n_per_class, config=config, base_seed=seed, mold_reversal=mold_reversal
        )
        out[name] = [list(t.messages) for t in trajectories]
    return out


def reward_activations(
    model: nn.Module,
    tokenizer: Any,
    *,
    n_per_class: int = 300,
    config: Any = None,
    seed: int = PAPER_SEED,
    mold_reversal: bool = False,
    layers: int | Sequence[int] | str = "all",
    batch_size: int = 16,
    backend: Backend = "hooks",
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClassActivations:
    """Final-direction-token activations of scripted Mold / Gold / Path trajectories (paper §A.3).

    ``cache_dir``: as in :func:`extract_class_activations` (reuse the activations of an identical capture).
    """

    chats = reward_trajectories(n_per_class, config=config, seed=seed, mold_reversal=mold_reversal)
    used_config = config if config is not None else maze_env.MazeConfig()
    metadata = {
        "recipe": "reward_vectors",
        "seed": seed,
        "mold_reversal": mold_reversal,
        "maze_config": _jsonable(used_config.to_dict())
        if hasattr(used_config, "to_dict")
        else str(used_config),
    }
    return extract_class_activations(
        model,
        tokenizer,
        chats,
        layers=layers,
        site="resid_post",
        position="last",
        close_final=False,
        batch_size=batch_size,
        backend=backend,
        progress=progress,
        metadata=metadata,
        cache_dir=cache_dir,
    )


def reward_vectors(
    model: nn.Module,
    tokenizer: Any,
    *,
    n_per_class: int = 300,
    config: Any = None,
    seed: int = PAPER_SEED,
    mold_reversal: bool = False,
    method: str | Aggregator = "mean_diff",
    layers: int | Sequence[int] | str = "all",
    batch_size: int = 16,
    backend: Backend = "hooks",
    progress: bool = False,
) -> dict[str, ConceptVector]:
    """v_Mold, v_Gold, v_Path (paper Eq. 1 with the default ``mean_diff``) from scripted trajectories.

    Run it on the untrained model for the control vectors u. ``n_per_class`` is 5,000 in the paper.
    """
    class_activations = reward_activations(
        model,
        tokenizer,
        n_per_class=n_per_class,
        config=config,
        seed=seed,
        mold_reversal=mold_reversal,
        layers=layers,
        batch_size=batch_size,
        backend=backend,
        progress=progress,
    )
    return aggregate(class_activations, method)
