"""ConceptVector: per-layer directions in the residual stream plus where they came from.

A value object (frozen): arithmetic returns new vectors, nothing is normalised behind your back, and
norms are part of the result (the paper treats ‖v‖ as informative).

Files:

- ``save(path)`` writes ``path.safetensors`` (one tensor ``direction.{layer}`` per layer, provenance also
  in the safetensors header) and ``path.json`` (provenance, norms). Both are written atomically.
- ``to_gguf(path)`` writes the llama.cpp control-vector format that repeng exports:
  ``general.architecture = "controlvector"``, ``controlvector.model_hint``, ``controlvector.layer_count``
  and one 1-D F32 tensor ``direction.{k}`` per layer. **Layer numbering is the identity**: repeng's
  ``direction.{k}`` is read at and added to the output of decoder block ``k`` (0-based; its
  ``hidden_states[k + 1]``), and llama.cpp adds ``direction.{k}`` to ``l_out`` of block ``k``
  (``llama_adapter_cvec::apply_to(cur, il)`` after the block's final residual add). That is exactly our
  ``resid_post`` at layer ``k``. llama.cpp rejects a file that contains ``direction.0`` (block 0's output
  cannot be steered there), so ``to_gguf`` drops layer 0 unless ``include_layer0=True``. llama.cpp
  applies the vector at every position, prompt included. Our provenance rides along as the extra key
  ``welfare_axis.provenance`` (llama.cpp ignores metadata), so the round trip is lossless for fp32.

Example:
    >>> import torch
    >>> v = ConceptVector({0: torch.ones(4), 1: torch.arange(4.0)}, model_name="toy", concept="Mold")
    >>> w = 2 * v - v
    >>> torch.equal(w[1], v[1]), round(v.norms()[0], 3)
    (True, 2.0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes import layers as _layers
from probes.artifacts import atomic_write, write_bytes

FORMAT_VERSION = 1
GGUF_ARCH = "controlvector"
GGUF_PROVENANCE_KEY = "welfare_axis.provenance"


def _write_with(path: Path, writer: Callable[[str], None]) -> None:
    """Atomically write ``path`` with a library writer that takes a path string (gguf)."""
    atomic_write(path, lambda tmp: writer(str(tmp)))


def _library_version() -> str:
    """The installed welfare-axis version (package metadata), or ``"unknown"`` when run uninstalled."""
    try:
        return importlib.metadata.version("welfare-axis")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


class ConceptVectorError(ValueError):
    """Bad directions or an incompatible combination (width, family, site)."""


class WidthMismatchError(ConceptVectorError):
    """Directions have a different width from each other, another vector or the model."""


class FamilyMismatchError(ConceptVectorError):
    """Vectors (or a vector and a model) come from different model families."""


def _base_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix("")
    return path


@dataclass(frozen=True, eq=False)
class ConceptVector:
    """Per-layer directions ``layer -> (d_model,)`` with provenance.

    Attributes:
        directions: layer index (0-based decoder block, see ``probes.layers``) -> direction tensor.
        model_name: checkpoint the activations came from (may differ between checkpoints of one base).
        model_family: ``probes.layers.model_family`` fingerprint; vectors of different families never mix.
        model_dtype: the dtype of the weights the activations came from (``"float32"``, ``"bfloat16"``);
            ``""`` when unknown (vectors saved before it was recorded).
        site: ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        position: read-position rule used at extraction (``"last"``, ``"all"``, ``"assistant"``, ...).
        method: aggregator that produced it (``"mean_diff"``, ``"pca_diff"``, ...).
        dataset_hash: sha256 of the rendered texts it was extracted from.
        n_per_class: number of samples per class.
        concept: what it points to, e.g. ``"Mold"``.
        version: welfare-axis version that made it.
        metadata: free-form JSON-serialisable extras (seed, config, selected layer...).
    """

    directions: dict[int, Tensor]
    model_name: str = "unknown"
    model_family: str = ""
    model_dtype: str = ""
    site: str = "resid_post"
    position: str = "last"
    method: str = "unknown"
    dataset_hash: str = ""
    n_per_class: dict[str, int] = field(default_factory=dict)
    concept: str = ""
    version: str = field(default_factory=_library_version)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ConceptVectorError("a ConceptVector needs at least one layer: directions is empty")
        clean: dict[int, Tensor] = {}
        width: int | None = None
        for layer in sorted(self.directions, key=int):
            tensor = self.directions[layer]
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ConceptVectorError(f"layer keys must be non-negative ints, got {layer!r}")
            if not isinstance(tensor, Tensor):
                tensor = torch.as_tensor(tensor)
            if tensor.ndim != 1:
                raise ConceptVectorError(
                    f"direction at layer {layer} must be 1-D (d_model,), got shape {tuple(tensor.shape)}"
                )
            if not tensor.is_floating_point():
                tensor = tensor.float()
            if width is None:
                width = tensor.shape[0]
            elif tensor.shape[0] != width:
                raise WidthMismatchError(
                    f"direction at layer {layer} has width {tensor.shape[0]}, other layers have {width}"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise ConceptVectorError(
                    f"direction at layer {layer} contains NaN or inf; check the activations it came from"
                )
            clean[int(layer)] = tensor.detach()
        _layers.check_site(self.site)
        object.__setattr__(self, "directions", clean)
        object.__setattr__(self, "n_per_class", {str(k): int(v) for k, v in self.n_per_class.items()})
        object.__setattr__(self, "metadata", dict(self.metadata))

    # ---- basic access -------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Sorted layer indices."""
        return sorted(self.directions)

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.directions.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.directions.values())).dtype

    def __getitem__(self, layer: int) -> Float[Tensor, " d_model"]:
        if layer not in self.directions:
            raise KeyError(f"layer {layer} not in this vector; it has layers {self.layers}")
        return self.directions[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.directions

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.directions)

    def __repr__(self) -> str:
        layers = self.layers
        span = f"{layers[0]}..{layers[-1]}" if len(layers) > 2 else ",".join(map(str, layers))
        return (
            f"ConceptVector(concept={self.concept!r}, layers=[{span}] ({len(layers)}), d_model={self.d_model}, "
            f"model_name={self.model_name!r}, site={self.site!r}, position={self.position!r}, "
            f"method={self.method!r}, n_per_class={self.n_per_class})"
        )

    def provenance(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-ready values."""
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_family": self.model_family,
            "model_dtype": self.model_dtype,
            "site": self.site,
            "position": self.position,
            "method": self.method,
            "dataset_hash": self.dataset_hash,
            "n_per_class": dict(self.n_per_class),
            "concept": self.concept,
            "version": self.version,
            "metadata": self.metadata,
            "d_model": self.d_model,
            "layers": self.layers,
        }

    def replace(self, **changes: Any) -> ConceptVector:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def select(self, layers: int | list[int]) -> ConceptVector:
        """Keep only some layers."""
        wanted = [layers] if isinstance(layers, int) else list(layers)
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise KeyError(f"layers {missing} not in this vector; it has layers {self.layers}")
        return self.replace(directions={layer: self.directions[layer] for layer in wanted})

    # ---- numerics -----------------------------------------------------------------------------
    def norms(self) -> dict[int, float]:
        """L2 norm per layer."""
        return {layer: float(t.float().norm()) for layer, t in sorted(self.directions.items())}

    def normalized(self) -> ConceptVector:
        """Unit-norm directions per layer (explicit; nothing else normalises)."""
        out = {}
        for layer, t in self.directions.items():
            norm = t.float().norm()
            if norm == 0:
                raise ConceptVectorError(f"cannot normalise the zero direction at layer {layer}")
            out[layer] = t / norm.to(t.dtype)
        return self.replace(directions=out, metadata={**self.metadata, "normalized": True})

    def cosine(self, other: ConceptVector | Mapping[int, Tensor]) -> dict[int, float]:
        """Cosine similarity per shared layer (float64 for accuracy)."""
        other_dirs = self._other_directions(other, "cosine")
        shared = [layer for layer in self.layers if layer in other_dirs]
        if not shared:
            raise ConceptVectorError(
                f"no shared layers: this vector has {self.layers}, the other has {sorted(other_dirs)}"
            )
        out = {}
        for layer in shared:
            a = self.directions[layer].double().cpu()
            b = other_dirs[layer].double().cpu()
            denominator = a.norm() * b.norm()
            out[layer] = float(a @ b / denominator) if denominator > 0 else float("nan")
        return out

    def project(
        self, activations: Float[Tensor, "n d_model"], layer: int, *, normalize: bool = True
    ) -> Float[Tensor, " n"]:
        """Scalar projection ``a · v / ‖v‖`` (or ``a · v`` with ``normalize=False``) at one layer."""
        v = self[layer].to(device=activations.device, dtype=torch.float32)
        if activations.shape[-1] != v.shape[0]:
            raise WidthMismatchError(
                f"activations have width {activations.shape[-1]}, the vector {v.shape[0]}"
            )
        scores = activations.float() @ v
        return scores / v.norm() if normalize else scores

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ConceptVector:
        """A copy on another device / dtype."""
        return self.replace(
            directions={layer: t.to(device=device, dtype=dtype) for layer, t in self.directions.items()}
        )

    # ---- arithmetic ---------------------------------------------------------------------------
    def _other_directions(self, other: ConceptVector | Mapping[int, Tensor], op: str) -> dict[int, Tensor]:
        if isinstance(other, ConceptVector):
            self.check_compatible(other, op=op)
            return other.directions
        if isinstance(other, Mapping):
            dirs = {int(k): torch.as_tensor(v) for k, v in other.items()}
            for layer, t in dirs.items():
                if t.shape != (self.d_model,):
                    raise WidthMismatchError(
                        f"direction at layer {layer} has shape {tuple(t.shape)}, expected ({self.d_model},)"
                    )
            return dirs
        raise TypeError(f"cannot {op} a ConceptVector with {type(other).__name__}")

    def check_compatible(self, other: ConceptVector, *, op: str = "combine") -> None:
        """Raise unless ``other`` has the same width, family and site."""
        if other.d_model != self.d_model:
            raise WidthMismatchError(
                f"cannot {op} vectors of width {self.d_model} ({self.model_name}) and {other.d_model} "
                f"({other.model_name})"
            )
        if self.model_family and other.model_family and self.model_family != other.model_family:
            raise FamilyMismatchError(
                f"cannot {op} vectors from different model families: {self.model_family!r} "
                f"({self.model_name}) vs {other.model_family!r} ({other.model_name})"
            )
        if self.site != other.site:
            raise ConceptVectorError(
                f"cannot {op} vectors from different sites: {self.site!r} vs {other.site!r}"
            )

    def _combine(self, other: ConceptVector, sign: float, symbol: str) -> ConceptVector:
        if not isinstance(other, ConceptVector):
            return NotImplemented
        self.check_compatible(other, op="add" if sign > 0 else "subtract")
        out: dict[int, Tensor] = dict(self.directions)
        for layer, t in other.directions.items():
            t = t.to(device=self.device, dtype=self.dtype)
            out[layer] = out[layer] + sign * t if layer in out else sign * t

        def pick(a: str, b: str) -> str:
            return a if a == b else f"{a}{symbol}{b}"

        return dataclasses.replace(
            self,
            directions=out,
            model_name=pick(self.model_name, other.model_name),
            model_family=self.model_family or other.model_family,
            model_dtype=pick(self.model_dtype, other.model_dtype),
            position=pick(self.position, other.position),
            method=pick(self.method, other.method),
            dataset_hash=pick(self.dataset_hash, other.dataset_hash),
            n_per_class={} if self.n_per_class != other.n_per_class else dict(self.n_per_class),
            concept=f"({self.concept}){symbol}({other.concept})",
            metadata={"combined_from": [self.provenance(), other.provenance()]},
        )

    def __add__(self, other: ConceptVector) -> ConceptVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: ConceptVector) -> ConceptVector:
        return self._combine(other, -1.0, "-")

    def _scale(self, factor: float, label: str) -> ConceptVector:
        if isinstance(factor, Tensor):
            if factor.numel() != 1:
                raise TypeError("a ConceptVector can only be scaled by a scalar")
            factor = float(factor)
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        if not math.isfinite(factor):
            raise ConceptVectorError(f"scale factor must be finite, got {factor}")
        return self.replace(
            directions={layer: t * factor for layer, t in self.directions.items()},
            concept=f"{label}({self.concept})",
        )

    def __mul__(self, factor: float) -> ConceptVector:
        return self._scale(factor, f"{factor}*")

    def __rmul__(self, factor: float) -> ConceptVector:
        return self._scale(factor, f"{factor}*")

    def __truediv__(self, factor: float) -> ConceptVector:
        if isinstance(factor, Tensor) and factor.numel() == 1:
            factor = float(factor)
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        if factor == 0:
            raise ZeroDivisionError("cannot divide a ConceptVector by zero")
        return self._scale(1.0 / factor, f"1/{factor}*")

    def __neg__(self) -> ConceptVector:
        return self._scale(-1.0, "-")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConceptVector):
            return NotImplemented
        if self.layers != other.layers:
            return False
        if any(
            self.directions[k].dtype != other.directions[k].dtype
            or not torch.equal(self.directions[k].cpu(), other.directions[k].cpu())
            for k in self.layers
        ):
            return False
        return self.provenance() == other.provenance()

    __hash__ = object.__hash__

    # ---- models -------------------------------------------------------------------------------
    def check_family(self, model: nn.Module) -> None:
        """Raise :class:`FamilyMismatchError` unless ``model`` is of this vector's family (any, when unknown)."""
        family = _layers.model_family(model)
        if self.model_family and family != self.model_family:
            raise FamilyMismatchError(
                f"vector comes from model family {self.model_family!r} ({self.model_name}); the model is "
                f"{family!r} ({_layers.model_name(model)})"
            )

    def check_model(self, model: nn.Module) -> None:
        """Raise unless this vector fits ``model`` (width, family, layers in range)."""
        width = _layers.d_model(model)
        if width != self.d_model:
            raise WidthMismatchError(
                f"vector width {self.d_model} ({self.model_name}) does not match the model's d_model {width} "
                f"({_layers.model_name(model)})"
            )
        self.check_family(model)
        total = _layers.n_layers(model)
        bad = [layer for layer in self.layers if layer >= total]
        if bad:
            raise IndexError(f"vector layers {bad} are out of range for a model with layers 0..{total - 1}")

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path.safetensors`` + ``path.json`` atomically; returns the safetensors path."""
        from safetensors.torch import save

        base = _base_path(path)
        provenance = self.provenance()
        provenance["norms"] = {str(k): v for k, v in self.norms().items()}
        tensors = {
            f"direction.{layer}": t.detach().cpu().contiguous() for layer, t in self.directions.items()
        }
        blob = save(tensors, metadata={"welfare_axis.provenance": json.dumps(provenance, sort_keys=True)})
        tensor_path = base.with_name(base.name + ".safetensors")
        json_path = base.with_name(base.name + ".json")
        write_bytes(tensor_path, blob)
        write_bytes(json_path, (json.dumps(provenance, indent=2, sort_keys=True) + "\n").encode())
        return tensor_path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> ConceptVector:
        """Read what :meth:`save` wrote (``path`` with or without a suffix)."""
        from safetensors import safe_open

        base = _base_path(path)
        tensor_path = base.with_name(base.name + ".safetensors")
        json_path = base.with_name(base.name + ".json")
        if not tensor_path.exists():
            raise FileNotFoundError(f"no concept vector at {tensor_path}")
        directions: dict[int, Tensor] = {}
        with safe_open(str(tensor_path), framework="pt", device=str(device)) as handle:
            header = handle.metadata() or {}
            for key in handle.keys():
                prefix, _, layer = key.partition(".")
                if prefix != "direction" or not layer.isdigit():
                    raise ConceptVectorError(f"{tensor_path} has unexpected tensor {key!r}")
                directions[int(layer)] = handle.get_tensor(key)
        if json_path.exists():
            provenance = json.loads(json_path.read_text())
        elif "welfare_axis.provenance" in header:
            provenance = json.loads(header["welfare_axis.provenance"])
        else:
            provenance = {}
        return cls._from_provenance(directions, provenance)

    @classmethod
    def _from_provenance(cls, directions: dict[int, Tensor], provenance: Mapping[str, Any]) -> ConceptVector:
        fields = {f.name for f in dataclasses.fields(cls)} - {"directions"}
        kwargs = {k: v for k, v in provenance.items() if k in fields}
        return cls(directions=directions, **kwargs)

    def to_gguf(self, path: str | os.PathLike[str], *, include_layer0: bool = False) -> Path:
        """Export as a llama.cpp control vector (repeng's format); see the module docstring for layers.

        Args:
            path: output file (``.gguf``).
            include_layer0: keep ``direction.0``. llama.cpp rejects such files; repeng reads them.
        """
        import gguf

        layers = self.layers
        if not include_layer0 and 0 in layers:
            layers = [layer for layer in layers if layer != 0]
            warnings.warn(
                "dropping layer 0 from the GGUF export: llama.cpp rejects direction.0 (pass include_layer0=True "
                "to keep it for repeng)",
                stacklevel=2,
            )
        if not layers:
            raise ConceptVectorError("nothing to export: the vector only has layer 0")
        path = Path(path)

        def write(tmp: str) -> None:
            writer = gguf.GGUFWriter(tmp, GGUF_ARCH)
            writer.add_string(f"{GGUF_ARCH}.model_hint", self.model_name)
            writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(layers))
            writer.add_string(GGUF_PROVENANCE_KEY, json.dumps(self.provenance(), sort_keys=True))
            for layer in layers:
                writer.add_tensor(f"direction.{layer}", self.directions[layer].detach().float().cpu().numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()

        _write_with(path, write)
        return path

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> ConceptVector:
        """Read a llama.cpp / repeng control-vector GGUF (ours round-trips its provenance)."""
        import gguf

        reader = gguf.GGUFReader(str(path))

        def string_field(key: str) -> str | None:
            fld = reader.get_field(key)
            if fld is None or not len(fld.parts):
                return None
            return bytes(fld.parts[fld.data[0]]).decode("utf-8")

        arch = string_field("general.architecture")
        if arch != GGUF_ARCH:
            raise ConceptVectorError(f"{path} has general.architecture={arch!r}, expected {GGUF_ARCH!r}")
        directions: dict[int, Tensor] = {}
        for tensor in reader.tensors:
            prefix, _, layer = tensor.name.partition(".")
            if prefix != "direction" or not layer.isdigit():
                raise ConceptVectorError(
                    f"{path} has unexpected tensor {tensor.name!r} (want direction.<layer>)"
                )
            directions[int(layer)] = torch.from_numpy(tensor.data.copy()).reshape(-1)
        provenance_text = string_field(GGUF_PROVENANCE_KEY)
        if provenance_text is not None:
            provenance = json.loads(provenance_text)
        else:
            provenance = {
                "model_name": string_field(f"{GGUF_ARCH}.model_hint") or "unknown",
                "method": "gguf",
            }
        return cls._from_provenance(directions, provenance)


def dataset_hash(texts: list[str]) -> str:
    """sha256 over the rendered texts (length-prefixed so boundaries matter)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
