"""The tiny local model: deterministic, cached, and loadable by transformers without a hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pytest_vllmgrid import tinymodel
from pytest_vllmgrid.tinymodel import OFFLINE_ENV, ensure_tiny_model
from pytest_vllmgrid.workloads import TOOL_SCENARIOS, classify_tool_call

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
                         capture_output=True, text=True, timeout=900, check=True)  # ~1 min idle, more when busy
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
    assert bool(embed.float().isfinite().all())


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
    # the generation prompt opens the reasoning: the model's first token is reasoning text, not <think>
    assert text.endswith("<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n<think>\n")


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


# Greedy generation with transformers in a child process (torch stays out of the test process): the
# benchmark's requests, rendered by the model's chat template exactly as vLLM renders them.
GENERATE = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from pytest_vllmgrid import tinymodel
from pytest_vllmgrid.workloads import TOOL_SCENARIOS, reasoning_tasks

torch.set_num_threads(2)
model_dir = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
stops = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
requests = {name: (s.messages, tinymodel.strict_tools(s.tools)) for name, s in TOOL_SCENARIOS.items()}
requests["reasoning"] = ([{"role": "user", "content": reasoning_tasks(1, seed=0)[0]}], None)
out = {}
for name, (messages, tools) in requests.items():
    inputs = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=192, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.eos_token_id)
    new = ids[0, inputs["input_ids"].shape[1]:].tolist()
    out[name] = {"text": tokenizer.decode(new, skip_special_tokens=True), "stopped": new[-1] in stops}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def greedy(model_dir: Path) -> dict[str, Any]:
    """The model's greedy answers to every tool scenario's request and to one reasoning task."""
    pytest.importorskip("transformers")
    env = {**os.environ, **OFFLINE_ENV}
    out = subprocess.run([sys.executable, "-c", GENERATE, str(model_dir)], capture_output=True, text=True,
                         timeout=300, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def hermes_calls(text: str) -> list[dict[str, Any]]:
    """The tool calls vLLM's hermes parser extracts: JSON inside <tool_call></tool_call>, after </think>."""
    content = text.split("</think>", 1)[1]
    calls = re.findall(r"<tool_call>(.*?)</tool_call>", content, re.DOTALL)
    parsed = [json.loads(call) for call in calls]
    return [{"type": "function", "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
            for call in parsed]


@pytest.mark.parametrize("scenario", list(TOOL_SCENARIOS))
def test_greedy_answer_to_a_benchmark_request_is_a_valid_hermes_tool_call(greedy: dict[str, Any],
                                                                          scenario: str) -> None:
    answer = greedy[scenario]
    assert answer["stopped"], f"no end of turn within 192 tokens: {answer['text']!r}"
    assert "<think>" not in answer["text"] and answer["text"].count("</think><tool_call>\n{") == 1, answer["text"]
    calls = hermes_calls(answer["text"])
    assert len(calls) == 1
    spec = TOOL_SCENARIOS[scenario]
    assert classify_tool_call(calls, spec.tools, spec.expected_function) is None, calls
    assert json.loads(calls[0]["function"]["arguments"]) == tinymodel.BENCHMARK_CALLS[scenario]


def test_greedy_answer_to_a_reasoning_task_thinks_then_answers(greedy: dict[str, Any]) -> None:
    text, stopped = greedy["reasoning"]["text"], greedy["reasoning"]["stopped"]
    assert stopped, text
    assert "<think>" not in text and text.count("</think>") == 1
    reasoning, answer = text.split("</think>")
    assert len(reasoning.split()) >= 10 and answer.startswith("\n\n") and answer.strip()
    assert "<tool_call>" not in text


def test_training_summary_is_stored_with_the_model(model_dir: Path) -> None:
    summary = json.loads((model_dir / "training.json").read_text())
    assert summary["recipe_version"] == tinymodel.RECIPE_VERSION
    assert summary["steps"] == tinymodel.TRAIN_STEPS == len(summary["loss_per_step"])
    assert summary["loss_per_step"][-1] < summary["loss_per_step"][0] / 10
    assert set(summary["benchmark_request_loss"]) == set(TOOL_SCENARIOS)
    assert all(loss < 0.05 for loss in summary["benchmark_request_loss"].values()), summary["benchmark_request_loss"]


def test_every_benchmark_call_validates_against_its_scenario() -> None:
    assert set(tinymodel.BENCHMARK_CALLS) == set(TOOL_SCENARIOS)
    for name, arguments in tinymodel.BENCHMARK_CALLS.items():
        spec = TOOL_SCENARIOS[name]
        call = {"function": {"name": spec.expected_function, "arguments": json.dumps(arguments)}}
        assert classify_tool_call([call], spec.tools, spec.expected_function) is None, name


def test_variant_builders_reproduce_the_benchmark_requests() -> None:
    # the variants the model trains on are the benchmark's requests with other values
    weather, flight, calendar = (TOOL_SCENARIOS[name].messages for name in ("weather", "flight_booking",
                                                                             "calendar_event"))
    assert tinymodel.weather_messages(weather[0], "Lisbon", "celsius") == weather
    flights = json.loads(flight[-1]["content"])
    assert tinymodel.flight_messages(flight[0], "LIS", "MAD", "2026-12-03", "Ana Silva", flights) == flight
    assert tinymodel.calendar_messages(calendar[0], 45, "design review", "Cache report", "2026-12-04", "10:00",
                                       ["ana@example.com", "rui@example.com"], [15, 5]) == calendar
    assert tinymodel.tool_transcript("current_time", None).messages == TOOL_SCENARIOS["current_time"].messages


def test_training_transcripts_are_seeded_and_varied() -> None:
    import random

    first = [tinymodel.tool_transcript("calendar_event", random.Random(7)) for _ in range(3)]
    again = [tinymodel.tool_transcript("calendar_event", random.Random(7)) for _ in range(3)]
    assert first == again
    rng = random.Random(1)
    completions = {tinymodel.tool_transcript("weather", rng).completion for _ in range(20)}
    assert len(completions) > 5
    assert all("<think>" not in c and c.count("\n</think><tool_call>\n") == 1 for c in completions)
    tasks = [tinymodel.reasoning_transcript(rng) for _ in range(12)]
    assert all("<think>" not in t.completion and t.completion.count("\n</think>\n\n") == 1 for t in tasks)
    assert len({t.messages[0]["content"][:20] for t in tasks}) >= 4  # several of the benchmark's templates


def test_pack_group_shares_the_prompt_start_and_predicts_only_completions() -> None:
    encoded = [([1, 2, 3, 4, 5], [6, 7]), ([1, 2, 3, 9], [8])]
    group = tinymodel.pack_group(encoded)
    assert group.input_ids == [1, 2, 3, 4, 5, 6, 7, 9, 8]
    assert group.branch == [-1, -1, -1, 0, 0, 0, 0, 1, 1]
    assert group.position_ids == [0, 1, 2, 3, 4, 5, 6, 3, 4]
    # row 4 (token 5) predicts 6, row 5 (6) predicts 7, row 7 (token 9 of branch 1) predicts 8
    assert list(zip(group.predict_at, group.targets, strict=True)) == [(4, 6), (5, 7), (7, 8)]


def test_pack_group_keeps_each_first_prediction_inside_its_branch() -> None:
    same_prompt = [([1, 2, 3], [4]), ([1, 2, 3], [5])]
    group = tinymodel.pack_group(same_prompt)
    assert group.branch == [-1, -1, 0, 0, 1, 1]  # the prompt's last token is repeated per branch
    assert list(zip(group.predict_at, group.targets, strict=True)) == [(2, 4), (4, 5)]


def test_concurrent_builders_take_turns_on_a_lock_outside_the_models_directory(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "turns"
    built = []

    def copy_model(staging: Path, texts: list[str]) -> None:
        built.append(staging)
        for path in model_dir.iterdir():
            (staging / path.name).write_bytes(path.read_bytes())

    monkeypatch.setattr(tinymodel, "write_model", copy_model)
    with ThreadPoolExecutor(2) as pool:
        dirs = list(pool.map(lambda _: ensure_tiny_model(cache), range(2)))
    assert dirs[0] == dirs[1] == cache / "models" / model_dir.name
    assert len(built) == 1  # the second builder waited and found the first one's model
    assert [path.name for path in (cache / "models").iterdir()] == [model_dir.name]
    assert [path.name for path in (cache / "locks").iterdir()] == [f"{model_dir.name}.lock"]


def test_training_renders_the_tools_as_the_benchmark_sends_them() -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "test_tool_calling.py"
    spec = importlib.util.spec_from_file_location("_tool_calling_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    for scenario in TOOL_SCENARIOS.values():
        assert tinymodel.strict_tools(scenario.tools) == benchmark.strict_tools(scenario.tools)


def test_a_reordered_benchmark_tool_changes_the_model_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    texts = tinymodel.training_texts()
    original = tinymodel.recipe_hash(texts)
    weather = TOOL_SCENARIOS["weather"]
    reordered = [{"function": weather.tools[0]["function"], "type": "function"}]  # same JSON object, other text
    monkeypatch.setitem(TOOL_SCENARIOS, "weather", dataclasses.replace(weather, tools=reordered))
    assert tinymodel.recipe_hash(texts) != original
