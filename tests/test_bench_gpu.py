"""bench/gpu.py: the model configs' sizes, the FLOP and projection arithmetic, and the tiny CPU run end to end."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from bench import gpu

BENCH_LINE = re.compile(
    r"^BENCH (gpu_rollout_vs_generate|gpu_train_vs_trl|gpu_train_mfu)\[([a-z0-9.-]+)\] "
    r"(nan|-?\d+\.\d+) (>=3|>=1\.5|>=0\.4)$"
)
PROJECTED = re.compile(r"^BENCH gpu_projected_hours (nan|\d+\.\d+) report$")


# ----------------------------------------------------------------------------------------------------
# Model configs
# ----------------------------------------------------------------------------------------------------

STATED = {"qwen3-4b": 4.02e9, "smollm2-135m": 134.5e6, "gemma3-270m": 268.1e6}
"""Parameter counts of the real checkpoints (tied embeddings once)."""


@pytest.mark.parametrize("name", list(gpu.MODEL_CONFIGS))
def test_model_configs_build_on_meta_with_the_stated_size(name):
    model = gpu.build_model(name, device="meta")  # shapes only: nothing allocated
    assert next(model.parameters()).device.type == "meta"
    count = gpu.parameter_count(model)
    assert count == pytest.approx(STATED[name], rel=0.01)
    assert count == pytest.approx(gpu.MODEL_CONFIGS[name].params, rel=0.01)
    assert type(model).__name__ == gpu.MODEL_CONFIGS[name].model_class
    assert model.config.tie_word_embeddings


def test_the_real_dimensions():
    qwen = gpu.model_config("qwen3-4b")
    assert (qwen.hidden_size, qwen.intermediate_size, qwen.num_hidden_layers) == (2560, 9728, 36)
    assert (qwen.num_attention_heads, qwen.num_key_value_heads, qwen.head_dim) == (32, 8, 128)
    assert qwen.vocab_size == 151936
    gemma = gpu.model_config("gemma3-270m")
    assert gemma.sliding_window == 512 and gemma.head_dim == 256 and gemma.num_key_value_heads == 1
    assert [i for i, t in enumerate(gemma.layer_types) if t == "full_attention"] == [5, 11, 17]
    smol = gpu.model_config("smollm2-135m")
    assert (smol.hidden_size, smol.num_hidden_layers, smol.num_key_value_heads) == (576, 30, 3)


@pytest.mark.parametrize("name", list(gpu.MODEL_CONFIGS))
def test_tiny_configs_keep_the_family(name):
    model = gpu.build_model(name, tiny=True, device="meta")
    assert type(model).__name__ == gpu.MODEL_CONFIGS[name].model_class
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == gpu.MODEL_CONFIGS[name].fields["vocab_size"]
    assert gpu.parameter_count(model) < 20e6


# ----------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------


def test_step_flops_by_hand():
    common = dict(
        linear_params_per_layer=100,
        n_layers=2,
        hidden=4,
        q_dim=8,
        vocab=10,
        tokens=6,
        attn_pairs=[18.0, 10.0],
        decisions=3,
    )
    forward = 2 * 100 * 6 * 2 + 4 * 28 * 8 + 2 * 4 * 10 * 3  # 2400 + 896 + 240
    assert forward == 3536
    full = gpu.step_flops(**common, finetune="full")
    assert full["forward"] == forward
    assert full["backward"] == 4 * 100 * 6 * 2 + 8 * 28 * 8 + 4 * 4 * 10 * 3 == 7072
    assert full["flops"] == 3 * forward  # forward + input and weight gradients
    lora = gpu.step_flops(**common, finetune="lora", grad_layers=1, lora_params=16)
    assert lora["backward"] == 2 * 100 * 6 * 1 + 8 * 10 * 8 + 2 * 4 * 10 * 3 == 2080  # top layer only
    assert lora["lora"] == 6 * 16 * 6
    assert lora["flops"] == 3536 + 2080 + 576
    tbrm = gpu.step_flops(**common, finetune="lora", grad_layers=1, lora_params=16, reference_forward=True)
    assert tbrm["flops"] == lora["flops"] + forward
    with pytest.raises(ValueError, match="attn_pairs"):
        gpu.step_flops(**{**common, "attn_pairs": [1.0]}, finetune="full")


def test_attention_pairs_with_a_sliding_window():
    assert gpu.attention_pairs([10, 4]) == 50 + 8
    assert gpu.attention_pairs([10, 4], window=4) == (4 * 10 - 8) + 8  # W·T − W²/2 past the window
    assert gpu.attention_pairs([10], window=20) == 50


@pytest.fixture(scope="module")
def tiny_smollm2():
    """A tiny SmolLM2-shaped model's tokenizer and two 2-turn episodes (q = heads·head_dim = d)."""
    from maze_env import MazeConfig
    from training.rollout import collect_episodes

    tokenizer = gpu.bench_tokenizer("smollm2-135m")
    model = gpu.build_model("smollm2-135m", tiny=True, tokenizer=tokenizer)
    episodes = collect_episodes(model, tokenizer, seeds=[5, 5], config=MazeConfig(n_turns=2))
    return tokenizer, episodes


def _policy(tokenizer, finetune, lora_layers=None, algo="dr_grpo"):
    from training import make_policy

    args = gpu.bench_args(algo, finetune, episodes=2, micro_batch=2, turns=2, autocast=False, device="cpu")
    args.lora_layers = lora_layers
    model = gpu.build_model("smollm2-135m", tiny=True, tokenizer=tokenizer)
    return make_policy(args, model, tokenizer)


def test_full_fine_tune_flops_by_hand_and_against_lora(tiny_smollm2):
    tokenizer, episodes = tiny_smollm2
    config = gpu.model_config("smollm2-135m", tiny=True)
    d, inter, layers, vocab = (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.vocab_size,
    )
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    linear = d * q + 2 * d * kv + q * d + 3 * d * inter  # q, k, v, o and the gated MLP
    lengths = episodes.attention_mask.sum(1).double()
    tokens = float(lengths.sum())
    pairs = float((lengths**2).sum()) / 2
    decisions = episodes.actions.numel()
    forward = 2 * linear * tokens * layers + 4 * pairs * q * layers + 2 * d * vocab * decisions

    full = gpu.policy_step_flops(_policy(tokenizer, "full"), episodes)
    assert full["linear_params_per_layer"] == linear
    assert full["flops"] == pytest.approx(3 * forward, rel=1e-12)
    assert full["flops"] - 6 * d * vocab * decisions - 12 * pairs * q * layers == pytest.approx(
        6 * linear * layers * tokens, rel=1e-12
    )  # the usual 6·N·tokens, N the decoder layers' weights

    lora = gpu.policy_step_flops(_policy(tokenizer, "lora"), episodes)  # every layer adapted
    assert lora["grad_layers"] == layers and lora["lora_params"] > 0
    # full FT = LoRA's forward and input gradients + weight gradients of every layer and the head
    weight_grads = 2 * linear * tokens * layers + 2 * d * vocab * decisions
    assert full["flops"] == pytest.approx(lora["flops"] - lora["lora"] + weight_grads, rel=1e-12)


def test_lora_flops_equal_bench_trainer_count(tiny_smollm2):
    from bench.trainer import training_flops

    tokenizer, episodes = tiny_smollm2
    for top in (None, 1):  # every layer; the top layer only (the backward stops there)
        policy = _policy(tokenizer, "lora", lora_layers=top)
        ours = gpu.policy_step_flops(policy, episodes)
        theirs = training_flops(policy.model, policy, episodes)
        assert ours["flops"] == pytest.approx(theirs["flops"], rel=1e-12)
        assert ours["grad_layers"] == theirs["grad_layers"] == (top or 2)


# ----------------------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------------------


def test_project_hours_arithmetic():
    p = gpu.project_hours(1000.0, 2000.0, episodes_per_step=512, tokens_per_episode=1024, steps=95)
    assert p["tokens_per_step"] == 524288
    assert p["rollout_s_per_step"] == pytest.approx(524.288)
    assert p["train_s_per_step"] == pytest.approx(262.144)
    assert p["hours"] == pytest.approx(95 * 786.432 / 3600)
    two = gpu.project_hours(
        1000.0, 2000.0, episodes_per_step=512, tokens_per_episode=1024, steps=95, update_passes=2
    )
    assert two["train_s_per_step"] == pytest.approx(2 * 262.144)


def test_projection_from_measurements():
    entry = {"rollout": {"ours_tps": 1000.0}, "train": {"dr_grpo/lora": {"tps": 2000.0}}}
    out = gpu.projection(entry, code_path_check=False)
    primary = out["primary"]
    assert primary["hours"] == pytest.approx(95 * 786.432 / 3600)
    assert primary["scheduled_hours"] == pytest.approx(500 * 786.432 / 3600)
    assert primary["paper_hours"] == 20.0
    assert primary["paper_over_projected"] == pytest.approx(20.0 / primary["hours"])
    assert out["fft"]["hours"] is None  # dr_grpo/full not measured
    assert "code-path" in gpu.projection(entry, code_path_check=True)["label"]
    assert gpu.projection(None, code_path_check=False)["primary"]["hours"] is None


def test_bench_lines_format():
    results = {
        "models": {
            "qwen3-4b": {
                "bench": {"gpu_rollout_vs_generate": 3.5, "gpu_train_vs_trl": None, "gpu_train_mfu": 0.41}
            }
        },
        "projection": {"primary": {"hours": 12.345}},
    }
    lines = gpu.bench_lines(results)
    assert lines == [
        "BENCH gpu_rollout_vs_generate[qwen3-4b] 3.500 >=3",
        "BENCH gpu_train_vs_trl[qwen3-4b] nan >=1.5",
        "BENCH gpu_train_mfu[qwen3-4b] 0.410 >=0.4",
        "BENCH gpu_projected_hours 12.35 report",
    ]
    assert all(BENCH_LINE.match(line) for line in lines[:-1]) and PROJECTED.match(lines[-1])


# ----------------------------------------------------------------------------------------------------
# The CLI and the tiny CPU run end to end
# ----------------------------------------------------------------------------------------------------


def test_cli_refuses_what_cannot_run():
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu.parse_args(["--device", "cuda"])
        with pytest.raises(SystemExit):  # the 4B at full size on a CPU
            gpu.parse_args(["--device", "cpu"])
    assert gpu.parse_args(["--device", "cpu", "--tiny"]).device.type == "cpu"
    auto = gpu.parse_args(["--tiny"]).device.type
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")


def _bench_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("BENCH ")]


def test_tiny_cpu_run_end_to_end(tmp_path, capsys):
    argv = ["--tiny", "--device", "cpu", "--skip-trl", "--threads", "1", "--tokenizer", "smollm2"]
    results = gpu.main([*argv, "--turns", "2", "--out", str(tmp_path)])
    printed = _bench_lines(capsys.readouterr().out)
    saved = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert (tmp_path / "bench.txt").read_text().splitlines() == printed == saved["bench_lines"]
    assert len(printed) == 3 * len(gpu.MODEL_CONFIGS) + 1
    assert all(BENCH_LINE.match(line) for line in printed[:-1]) and PROJECTED.match(printed[-1])
    assert saved["device"]["type"] == "cpu" and saved["tiny"] and saved["mfu_dtype"] == "float32"
    assert saved["matmul_peak_tflops"]["float32"] > 0 and not saved["skipped"]
    assert any("code-path check" in note for note in saved["notes"])
    assert list(saved["models"]) == list(gpu.MODEL_CONFIGS)
    for entry in saved["models"].values():
        assert not entry["errors"], entry["errors"]
        rollout = entry["rollout"]
        assert rollout["turns"] == 2 and rollout["episodes"] == 4 and rollout["tokens"] > 0
        assert rollout["ratio"] == pytest.approx(rollout["ours_tps"] / rollout["naive_tps"])
        assert set(entry["train"]) == {f"{a}/{f}" for a, f in gpu.TRAIN_CONFIGS}
        for label, train in entry["train"].items():
            assert train["tps"] > 0 and 0 < train["mfu"] < 2 and train["peak_memory_gb"] > 0
            assert train["tps"] == pytest.approx(train["tokens"] / sorted(train["step_s"])[0])  # 1 rep
            lora = label.endswith("lora")
            assert (train["trainable_params"] < entry["config"]["params"]) == lora
        assert entry["trl"] == {"skipped": "--skip-trl"}
        assert entry["bench"]["gpu_train_vs_trl"] is None
        assert entry["bench"]["gpu_train_mfu"] == pytest.approx(entry["train"]["dr_grpo/lora"]["mfu"])
    projection = saved["projection"]
    assert "code-path check" in projection["label"]
    qwen = saved["models"]["qwen3-4b"]
    expected = gpu.project_hours(
        qwen["rollout"]["ours_tps"],
        qwen["train"]["dr_grpo/lora"]["tps"],
        episodes_per_step=512,
        tokens_per_episode=1024,
        steps=95,
    )["hours"]
    assert projection["primary"]["hours"] == pytest.approx(expected)
    assert results["projection"]["primary"]["hours"] == pytest.approx(expected)


def test_tiny_cpu_run_with_trl(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    argv = ["--tiny", "--device", "cpu", "--threads", "1", "--models", "smollm2-135m", "--out", str(tmp_path)]
    results = gpu.main(argv)
    entry = results["models"]["smollm2-135m"]
    assert not entry["errors"], entry["errors"]
    trl = entry["trl"]
    assert trl["tps"] > 0 and len(trl["step_s"]) == 1 and trl["completion_mean_length"] == 3
    assert trl["ratio"] == pytest.approx(trl["ours_interleaved_tps"] / trl["tps"])
    line = next(x for x in results["bench_lines"] if x.startswith("BENCH gpu_train_vs_trl"))
    assert math.isfinite(float(line.split()[2]))
    assert results["bench_lines"][-1] == "BENCH gpu_projected_hours nan report"  # no qwen3-4b measured


def test_budget_skips_and_still_writes(tmp_path):
    argv = ["--tiny", "--device", "cpu", "--threads", "1", "--tokenizer", "smollm2", "--minutes", "0"]
    results = gpu.main([*argv, "--models", "qwen3-4b", "--out", str(tmp_path)])
    assert results["skipped"] and "rollout" not in results["models"]["qwen3-4b"]
    assert (tmp_path / "bench.txt").read_text().splitlines() == [
        "BENCH gpu_rollout_vs_generate[qwen3-4b] nan >=3",
        "BENCH gpu_train_vs_trl[qwen3-4b] nan >=1.5",
        "BENCH gpu_train_mfu[qwen3-4b] nan >=0.4",
        "BENCH gpu_projected_hours nan report",
    ]


def test_exported_tokenizers_load_without_the_weights_packages(tmp_path):
    from probes.models import load_tokenizer

    (path,) = gpu.export_tokenizers(tmp_path, ["smollm2-135m-instruct"])
    assert path == tmp_path / "models" / "smollm2-135m-instruct.tokenizer"
    loaded = load_tokenizer("smollm2-135m-instruct", cache_dir=tmp_path / "models")
    bundled = load_tokenizer("smollm2-135m-instruct")
    text = bundled.apply_chat_template([{"role": "user", "content": "Go N"}], tokenize=False)
    assert loaded.apply_chat_template([{"role": "user", "content": "Go N"}], tokenize=False) == text
    assert loaded(text)["input_ids"] == bundled(text)["input_ids"]
    assert loaded.pad_token_id == bundled.pad_token_id


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_cuda_run(tmp_path):  # the device path at tiny size: bf16 autocast, synchronised timings
    argv = ["--tiny", "--device", "cuda", "--tokenizer", "smollm2", "--models", "qwen3-4b"]
    results = gpu.main([*argv, "--out", str(tmp_path)])
    entry = results["models"]["qwen3-4b"]
    assert not entry["errors"], entry["errors"]
    assert results["mfu_dtype"] == "bfloat16" and results["matmul_peak_tflops"]["bfloat16"] > 0
    assert all(train["peak_memory_gb"] > 0 for train in entry["train"].values())
