"""The tiny local model: deterministic, cached, and loadable by transformers without a hub."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_vllmgrid import tinymodel
from pytest_vllmgrid.tinymodel import OFFLINE_ENV, ensure_tiny_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    {"role": "assistant", "content": "Sunny in Paris, rain in Rome."},
    {"role": "user", "content": "Thanks!"},
]


def build_in_subprocess(cache: Path) -> Path:
    """Build through the command line in a fresh interpreter (keeps torch out of the test process)."""
    out = subprocess.run([sys.executable, "-m", "pytest_vllmgrid.tinymodel", "--cache-dir", str(cache)],
                         capture_output=True, text=True, timeout=300, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model built for this module's tests."""
    return build_in_subprocess(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forbid any hub access for the test."""
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def tokenizer(model_dir: Path, offline: None) -> Any:
    """The model's tokenizer as transformers loads it."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


def file_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file in a directory, by file name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def test_two_builds_in_different_caches_are_byte_identical(model_dir: Path, tmp_path: Path) -> None:
    other = build_in_subprocess(tmp_path / "other-cache")
    assert other != model_dir
    assert other.name == model_dir.name
    assert file_digests(other) == file_digests(model_dir)
    assert set(file_digests(other)) == set(tinymodel.MODEL_FILES)


def test_second_call_reuses_the_cached_model(model_dir: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in model_dir.iterdir()}
    again = ensure_tiny_model(model_dir.parent.parent)
    assert again == model_dir
    assert {path.name: path.stat().st_mtime_ns for path in again.iterdir()} == before  # nothing rebuilt


def test_model_lives_under_the_cache_by_recipe_hash(model_dir: Path) -> None:
    hash12 = tinymodel.recipe_hash(tinymodel.training_texts())
    assert model_dir.name == f"tiny-qwen2-{hash12}"
    assert model_dir.parent.name == "models"
    assert len(hash12) == 12


def test_cache_dir_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tinymodel.CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    assert tinymodel.resolve_cache_dir() == tmp_path / "env-cache"
    assert tinymodel.resolve_cache_dir(tmp_path / "given") == tmp_path / "given"


def test_recipe_change_changes_the_model_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = tinymodel.training_texts()
    original = tinymodel.recipe_hash(texts)
    monkeypatch.setattr(tinymodel, "WEIGHT_SEED", tinymodel.WEIGHT_SEED + 1)
    assert tinymodel.recipe_hash(texts) != original


def test_build_leaves_no_staging_directory(model_dir: Path) -> None:
    assert [path.name for path in model_dir.parent.iterdir()] == [model_dir.name]


def test_losing_a_concurrent_build_keeps_the_winner(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "race"
    target = cache / "models" / model_dir.name
    def write_while_another_process_finishes_first(staging: Path, texts: list[str]) -> None:
        staging.mkdir(parents=True, exist_ok=True)  # this build's files (copied: no torch in this process)
        for path in model_dir.iterdir():
            (staging / path.name).write_bytes(path.read_bytes())
        target.mkdir(parents=True)
        for path in model_dir.iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        (target / "winner").write_text("kept")

    monkeypatch.setattr(tinymodel, "write_model", write_while_another_process_finishes_first)
    assert ensure_tiny_model(cache) == target
    assert (target / "winner").read_text() == "kept"
    assert [path.name for path in target.parent.iterdir()] == [target.name]


def test_config_loads_with_transformers_offline(model_dir: Path, offline: None) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    assert config.model_type == "qwen2"
    assert config.architectures == ["Qwen2ForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers) == (256, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.max_position_embeddings == 4096
    assert config.tie_word_embeddings is True
    assert config.vocab_size % 64 == 0


def test_vocab_covers_the_tokenizer(model_dir: Path, tokenizer: Any) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert len(tokenizer) <= config["vocab_size"] < len(tokenizer) + 64


def test_weights_have_qwen2_names_and_bf16(model_dir: Path) -> None:
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    expected = tinymodel.weight_shapes(config["vocab_size"])
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        assert set(weights.keys()) == set(expected)
        embed = weights.get_tensor("model.embed_tokens.weight")
        q_proj = weights.get_slice("model.layers.1.self_attn.q_proj.weight")
        assert tuple(q_proj.get_shape()) == (256, 256)
    assert str(embed.dtype) == "torch.bfloat16"
    assert tuple(embed.shape) == (config["vocab_size"], 256)
    assert float(embed.float().std()) == pytest.approx(tinymodel.INIT_STD, rel=0.1)


def test_chat_template_renders_tools_calls_and_results(tokenizer: Any) -> None:
    text = tokenizer.apply_chat_template(
        TOOL_CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain" in text
    assert "<|im_start|>assistant\nSunny in Paris, rain in Rome.<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_without_tools_has_no_system_turn(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.parametrize("token", ["<tool_call>", "</tool_call>", "<think>", "</think>"])
def test_markup_token_is_one_ordinary_token(tokenizer: Any, token: str) -> None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == token


@pytest.mark.parametrize("token", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
def test_chat_control_token_is_special(tokenizer: Any, token: str) -> None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == ""
    assert token in tokenizer.all_special_tokens


def test_transformers_tokenizer_matches_the_trained_one(model_dir: Path, tokenizer: Any) -> None:
    from tokenizers import Tokenizer

    trained = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = tinymodel.training_texts()[0][:5000] + " 12345 naïve <tool_call>{}</tool_call>"
    assert tokenizer.encode(text, add_special_tokens=False) == trained.encode(text).ids
    assert tokenizer.decode(trained.encode(text).ids) == text


def test_eos_and_pad_are_endoftext(tokenizer: Any) -> None:
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|endoftext|>"


def test_offline_env_switches_off_hub_and_telemetry() -> None:
    assert OFFLINE_ENV["HF_HUB_OFFLINE"] == "1"
    assert OFFLINE_ENV["TRANSFORMERS_OFFLINE"] == "1"
    assert OFFLINE_ENV["VLLM_NO_USAGE_STATS"] == "1"
    assert all(isinstance(value, str) for value in OFFLINE_ENV.values())


def test_command_line_prints_the_model_directory(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tinymodel.main(["--cache-dir", str(model_dir.parent.parent)])
    assert capsys.readouterr().out.strip() == str(model_dir)
