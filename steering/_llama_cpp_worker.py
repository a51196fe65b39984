"""Run inside a child process that has llama-cpp-python on its path (see ``steering.llama_cpp_check``).

``python -m steering._llama_cpp_worker REQUEST.json OUT.safetensors``: load the GGUF model with llama.cpp,
optionally load a control-vector GGUF the way llama.cpp's own loader does, and write the next-token logits
of every prompt (``logits.{i}``, float32) to ``OUT``.

The control-vector loader: llama-cpp-python binds llama.cpp's C API but not its ``common`` library, where
``common_control_vector_load_one`` (``common/common.cpp``) turns the file into the buffer that
``llama_set_adapter_cvec`` takes (what ``llama-cli --control-vector-scaled FILE S`` does). This module
repeats that function step for step, reading the file with ggml's own GGUF reader (``gguf_init_from_file``,
``ggml_get_tensor`` from ``libggml-base``), with the same checks: tensors named ``direction.N``, N ≥ 1 (0 is
rejected), type F32, one dimension, one width; ``direction.N`` goes to ``data[(N - 1) * n_embd:]``, scaled
by the strength. llama.cpp then adds buffer row N − 1 to the output of block N (``llama_adapter_cvec``).
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def _ggml_base() -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*"))
    if not candidates:
        raise RuntimeError(f"libggml-base not found in {lib_dir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GgufInitParams]
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.ggml_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_get_tensor.restype = ctypes.c_void_p
    lib.ggml_n_dims.argtypes = [ctypes.c_void_p]
    lib.ggml_n_dims.restype = ctypes.c_int
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    return lib


def load_control_vector(path: str, strength: float) -> tuple[int, np.ndarray]:
    """``common_control_vector_load_one`` (llama.cpp ``common/common.cpp``): ``(n_embd, data)``.

    Raises:
        ValueError: the file fails one of llama.cpp's checks (the message is llama.cpp's).
    """
    lib = _ggml_base()
    ggml_ctx = ctypes.c_void_p()
    params = _GgufInitParams(False, ctypes.pointer(ggml_ctx))
    gguf_ctx = lib.gguf_init_from_file(path.encode(), params)
    if not gguf_ctx:
        raise ValueError(f"failed to load control vector file from {path}")
    n_embd = -1
    data = np.zeros(0, dtype=np.float32)
    try:
        for i in range(lib.gguf_get_n_tensors(gguf_ctx)):
            name = lib.gguf_get_tensor_name(gguf_ctx, i).decode()
            head, dot, tail = name.partition(".")
            layer_idx = int(tail) if dot and head == "direction" and tail.lstrip("-").isdigit() else -1
            if layer_idx < 0:
                raise ValueError(f"invalid/unparsable direction tensor layer index in {path}")
            if layer_idx == 0:
                raise ValueError(f"invalid (zero) direction tensor layer index in {path}")
            tensor = lib.ggml_get_tensor(ggml_ctx, name.encode())
            if ctypes.c_int.from_address(tensor).value != GGML_TYPE_F32:  # ggml_tensor.type, its first field
                raise ValueError(f"invalid (non-F32) direction tensor type in {path}")
            if lib.ggml_n_dims(tensor) != 1:
                raise ValueError(f"invalid (non-1D) direction tensor shape in {path}")
            n = lib.ggml_nelements(tensor)
            if n_embd == -1:
                n_embd = n
            elif n != n_embd:
                raise ValueError(f"direction tensor in {path} does not match previous dimensions")
            if data.size < n_embd * layer_idx:
                data = np.concatenate([data, np.zeros(n_embd * layer_idx - data.size, dtype=np.float32)])
            src = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(n_embd,))
            data[n_embd * (layer_idx - 1) : n_embd * layer_idx] += src * np.float32(strength)
    finally:
        lib.gguf_free(gguf_ctx)
        if ggml_ctx.value:
            lib.ggml_free(ggml_ctx)
    return n_embd, data


def main(request_path: str, out_path: str) -> None:
    import llama_cpp
    from safetensors.numpy import save_file

    request = json.loads(Path(request_path).read_text())
    llm = llama_cpp.Llama(
        model_path=request["model"],
        n_ctx=int(request.get("n_ctx", 512)),
        n_threads=int(request.get("n_threads", 2)),
        n_batch=512,
        seed=0,
        logits_all=True,
        verbose=False,
    )
    n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
    if request.get("control_vector"):
        n_embd, data = load_control_vector(request["control_vector"], float(request.get("strength", 1.0)))
        if n_embd != llm.n_embd():
            raise ValueError(f"control vector n_embd {n_embd} does not match the model's {llm.n_embd()}")
        buffer = (ctypes.c_float * data.size).from_buffer(data)
        start, end = 1, n_layer  # llama-cli's defaults (--control-vector-layer-range unset)
        err = llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, buffer, data.size, n_embd, start, end)
        if err:
            raise RuntimeError(f"llama_set_adapter_cvec returned {err}")
    logits: dict[str, np.ndarray] = {}
    for i, ids in enumerate(request["token_ids"]):
        llm.reset()  # n_tokens = 0; eval then drops the whole KV cache (kv_cache_seq_rm from 0)
        llm.eval(ids)
        logits[f"logits.{i}"] = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    meta = {"llama_cpp_python": llama_cpp.__version__, "n_layer": str(n_layer)}
    save_file(logits, out_path, metadata=meta)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
