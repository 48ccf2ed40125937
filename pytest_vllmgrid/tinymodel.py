"""Generate the tiny local Qwen2 model that the default CPU grid serves (no weights downloaded).

The model is built here, not fetched: a byte-level BPE tokenizer trained on Python stdlib sources, a
seeded random Qwen2 initialisation, then a short deterministic training run (CPU, about a minute on
2 cores) on synthetic chat transcripts rendered with the model's own chat template:

- every tool scenario of the benchmarks (workloads.TOOL_SCENARIOS: the same system prompt, tools
  with `"strict": true` and messages as benchmarks/test_tool_calling.py sends them, plus variants
  with other argument values) answered by a short reasoning section and a hermes tool call,
  `...\n</think><tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`;
- step-by-step tasks in the benchmarks' templates (workloads.reasoning_tasks, other numbers)
  answered by `<steps>\n</think>\n\n<answer>`.

The chat template opens the reasoning itself (`<|im_start|>assistant\n<think>\n`, as the thinking
templates of Qwen3-2507 and DeepSeek-R1 do), so the model's first generated token is reasoning text
that a reasoning parser streams at once. When the model generated `<think>` itself, the parser
swallowed that first token and every client TTFT read one decode step (~3 ms here) late against
the engine's own histogram (issue 16.6).

So the default job exercises the success paths: hermes tool calls that parse and validate, and a
reasoning section that a `--reasoning-parser` splits from the answer. Everything that shapes the
bytes is in recipe() (and the benchmark prompts' digest), hashed into the cache directory's name.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECIPE_VERSION = "tiny-qwen2/3"  # bump on any change to the code below that changes the model's bytes
MODEL_NAME_PREFIX = "tiny-qwen2"
CACHE_ENV_VAR = "VLLMGRID_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/pytest-vllmgrid")

# Environment a deployer adds to the server's so that nothing reaches a model hub or phones home.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

HIDDEN_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = 64  # the CPU attention kernels support only some head sizes; 64 is one of them
INTERMEDIATE_SIZE = 512
MAX_POSITIONS = 4096
RMS_NORM_EPS = 1e-6
ROPE_THETA = 10000.0
INIT_STD = 0.02
WEIGHT_SEED = 20261125
VOCAB_MULTIPLE = 64

BPE_VOCAB_SIZE = 4090  # plus the ordinary added tokens below: 4096 tokens in all
BPE_MIN_FREQUENCY = 2
EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)
# Ordinary (non-special) added tokens: they survive detokenisation with skip_special_tokens,
# which the hermes tool parser and the <think> reasoning parsers rely on.
ORDINARY_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
# Stdlib modules present in every Python from 3.10 on; read in this sorted order.
TRAINING_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "collections/__init__.py",
    "contextlib.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "email/message.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "html/parser.py",
    "http/client.py",
    "inspect.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "pprint.py",
    "random.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "subprocess.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "typing.py",
    "urllib/parse.py",
)
MIN_TRAINING_CHARS = 500_000
# transformers' Qwen2Tokenizer rebuilds its pipeline around this pre-tokenizer split whatever
# tokenizer.json says, so the BPE is trained with the same one: every loader then agrees.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# ChatML in the Qwen2.5 manner: tools listed in the system turn (hermes format), assistant
# tool calls as <tool_call> JSON blocks, consecutive tool results grouped in one user turn.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system_text = messages[0].content -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_text = '" + DEFAULT_SYSTEM_PROMPT + "' if tools else none -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- if system_text is not none -%}"
    "{{- '<|im_start|>system\\n' + system_text -}}"
    "{%- if tools -%}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.'"
    " + '\\n\\nYou are provided with function signatures within <tools></tools> XML tags:'"
    " + '\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + tool | tojson -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name'"
    " + ' and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    " + '{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call>' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message.role == 'tool' -%}"
    "{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' and message.tool_calls -%}"
    "{{- '<|im_start|>assistant' -}}"
    "{%- if message.content -%}{{- '\\n' + message.content -}}{%- endif -%}"
    "{%- for call in message.tool_calls -%}"
    "{%- set call = call.function if call.function is defined else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": ' + call.name | tojson + ', \"arguments\": ' -}}"
    "{%- if call.arguments is string -%}{{- call.arguments -}}"
    "{%- else -%}{{- call.arguments | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    # the generation prompt opens the reasoning: the model starts inside it (see the module doc)
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}"
)

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
    "training.json",
)

# The training run: fixed seed and thread count, deterministic torch ops, AdamW with a warm-up and a
# cosine decay. Each step sees one tree-packed sequence per group (each tool scenario, reasoning):
# the group's common token prefix (system prompt and tools) once, its examples as branches that
# attend to the prefix and to themselves only, the loss on the final assistant turns.
TRAIN_SEED = 20261126
TRAIN_THREADS = 2
TRAIN_STEPS = 150
LEARNING_RATE = 3e-3
WARMUP_STEPS = 15
FINAL_LR_FRACTION = 0.1
ADAM_BETAS = (0.9, 0.98)
GRAD_CLIP = 1.0
TOOL_VARIANTS_PER_STEP = 1  # besides the benchmark's own request, in every step
REASONING_PER_STEP = 2


def recipe() -> dict[str, Any]:
    """Every constant that shapes the model's bytes, with the recipe version."""
    return {
        "recipe_version": RECIPE_VERSION,
        "hidden_size": HIDDEN_SIZE,
        "num_layers": NUM_LAYERS,
        "num_heads": NUM_HEADS,
        "num_kv_heads": NUM_KV_HEADS,
        "head_dim": HEAD_DIM,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_positions": MAX_POSITIONS,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": ROPE_THETA,
        "init_std": INIT_STD,
        "weight_seed": WEIGHT_SEED,
        "vocab_multiple": VOCAB_MULTIPLE,
        "bpe_vocab_size": BPE_VOCAB_SIZE,
        "bpe_min_frequency": BPE_MIN_FREQUENCY,
        "pretokenize_pattern": PRETOKENIZE_PATTERN,
        "special_tokens": list(SPECIAL_TOKENS),
        "ordinary_added_tokens": list(ORDINARY_ADDED_TOKENS),
        "training_files": list(TRAINING_FILES),
        "chat_template": CHAT_TEMPLATE,
        **training_recipe(),
    }


def training_texts() -> list[str]:
    """The tokenizer's training corpus: the listed stdlib sources that exist, in sorted order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (stdlib / name).read_text(encoding="utf-8")
        for name in sorted(TRAINING_FILES)
        if (stdlib / name).is_file()
    ]
    if sum(map(len, texts)) < MIN_TRAINING_CHARS:
        raise RuntimeError(
            f"too little Python stdlib source under {stdlib} to train the tiny model's"
            f" tokenizer (need {MIN_TRAINING_CHARS} characters from {', '.join(TRAINING_FILES)})"
        )
    return texts


def recipe_hash(texts: list[str]) -> str:
    """The first 12 hex digits of the SHA-256 of the recipe and the training corpus."""
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:12]


def resolve_cache_dir(cache_dir: Path | None = None) -> Path:
    """The cache root: the argument, else $VLLMGRID_CACHE_DIR, else ~/.cache/pytest-vllmgrid."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR)
    return Path(from_env).expanduser() if from_env else DEFAULT_CACHE_DIR.expanduser()


def is_complete(model_dir: Path) -> bool:
    """Whether every file of a built model is present."""
    return all((model_dir / name).is_file() for name in MODEL_FILES)


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """Build the tiny model unless already cached, and return its directory.

    Builders of one model on one machine take turns (a lock file under the cache's locks/): the second
    finds the first one's model instead of training again. Across machines sharing a cache, the first
    rename wins.
    """
    texts = training_texts()
    models_dir = resolve_cache_dir(cache_dir) / "models"
    target = models_dir / f"{MODEL_NAME_PREFIX}-{recipe_hash(texts)}"
    if is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    locks_dir = models_dir.parent / "locks"  # not beside the models: a removed lock file would race
    locks_dir.mkdir(exist_ok=True)
    with _build_lock(locks_dir / f"{target.name}.lock"):
        if not is_complete(target):
            _build(target, texts)
    return target


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builds stay possible, the rename below settles them
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(target: Path, texts: list[str]) -> None:
    """Build into a private staging directory beside `target`, then rename it into place."""
    models_dir = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=models_dir))
    try:
        write_model(staging, texts)
        for path in staging.iterdir():  # mkdtemp makes it private; a container may read it
            path.chmod(0o644)
        staging.chmod(0o755)
        if target.exists() and not is_complete(target):
            shutil.rmtree(target, ignore_errors=True)  # damaged by hand: replace it
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


TRAINING_CONSTANTS = ("TRAIN_SEED", "TRAIN_THREADS", "TRAIN_STEPS", "LEARNING_RATE", "WARMUP_STEPS",
                      "FINAL_LR_FRACTION", "ADAM_BETAS", "GRAD_CLIP", "TOOL_VARIANTS_PER_STEP", "REASONING_PER_STEP")


def training_recipe() -> dict[str, object]:
    """What the training depends on (in the recipe hash and in tokenizer_config.json, for provenance)."""
    constants = {name.lower(): globals()[name] for name in TRAINING_CONSTANTS}
    return {**constants, "adam_betas": list(ADAM_BETAS), "benchmark_prompts": benchmark_prompts_digest()}


BUILD_TIMEOUT_S = 1800.0  # the training takes about a minute on 2 quiet cores; a stuck child is killed


def write_model(model_dir: Path, texts: list[str]) -> None:
    """Write every file of the model into an existing, empty directory, in a fresh interpreter.

    The training imports torch: a child process keeps it (and its thread pool) out of the caller,
    and gives every build the same start (threads, deterministic flags, no state left by others).
    """
    # Idle OpenMP threads sleep instead of spinning: with the cores busy (another build, a server) a
    # spinning thread waits for a preempted one, and 20 steps took 48 s instead of 38 s (PASSIVE) or 6 s
    # on an idle machine. The thread count is part of the recipe: other counts round differently.
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(TRAIN_THREADS), "MKL_NUM_THREADS": str(TRAIN_THREADS),
           "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [sys.executable, "-m", "pytest_vllmgrid.tinymodel", "--write-into", str(model_dir),
            "--expect-hash", recipe_hash(texts)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny model failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    if proc.stderr.strip():
        print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)  # the training's one-line summary


def build_model_files(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    """Tokenizer, configs, then the trained weights, into model_dir; return the training summary."""
    tokenizer = train_tokenizer(texts)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    vocab_size = padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True))
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    im_end_id = tokenizer.token_to_id(IM_END)
    write_json(model_dir / "config.json", model_config(vocab_size, eos_id))
    write_json(
        model_dir / "generation_config.json",
        {"eos_token_id": [im_end_id, eos_id], "pad_token_id": eos_id},
    )
    write_json(model_dir / "tokenizer_config.json", tokenizer_config())
    summary = write_weights(model_dir, vocab_size)
    write_json(model_dir / "training.json", summary)
    return summary


def train_tokenizer(texts: list[str]) -> Any:
    """Train a byte-level BPE tokenizer on the texts and add the chat and tool tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=BPE_MIN_FREQUENCY,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in ORDINARY_ADDED_TOKENS]
    )
    return tokenizer


def padded_vocab_size(tokenizer_size: int) -> int:
    """The tokenizer size rounded up to a multiple of VOCAB_MULTIPLE."""
    return -(-tokenizer_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_config(vocab_size: int, eos_id: int) -> dict[str, Any]:
    """The transformers config.json of a Qwen2ForCausalLM."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "initializer_range": INIT_STD,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": ROPE_THETA,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": NUM_LAYERS,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "bfloat16",
    }


def tokenizer_config() -> dict[str, Any]:
    """The tokenizer_config.json: special tokens, length limit and the chat template."""
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        **training_recipe(),
    }


def weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes as transformers' Qwen2 (tied embeddings) expects them."""
    q_size, kv_size = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, HIDDEN_SIZE)}
    for layer in range(NUM_LAYERS):
        prefix = f"model.layers.{layer}"
        shapes |= {
            f"{prefix}.input_layernorm.weight": (HIDDEN_SIZE,),
            f"{prefix}.self_attn.q_proj.weight": (q_size, HIDDEN_SIZE),
            f"{prefix}.self_attn.q_proj.bias": (q_size,),
            f"{prefix}.self_attn.k_proj.weight": (kv_size, HIDDEN_SIZE),
            f"{prefix}.self_attn.k_proj.bias": (kv_size,),
            f"{prefix}.self_attn.v_proj.weight": (kv_size, HIDDEN_SIZE),
            f"{prefix}.self_attn.v_proj.bias": (kv_size,),
            f"{prefix}.self_attn.o_proj.weight": (HIDDEN_SIZE, q_size),
            f"{prefix}.post_attention_layernorm.weight": (HIDDEN_SIZE,),
            f"{prefix}.mlp.gate_proj.weight": (INTERMEDIATE_SIZE, HIDDEN_SIZE),
            f"{prefix}.mlp.up_proj.weight": (INTERMEDIATE_SIZE, HIDDEN_SIZE),
            f"{prefix}.mlp.down_proj.weight": (HIDDEN_SIZE, INTERMEDIATE_SIZE),
        }
    shapes["model.norm.weight"] = (HIDDEN_SIZE,)
    return shapes


def initial_weights(vocab_size: int) -> dict[str, Any]:
    """Seeded random float32 weights (norms one, biases zero), before training."""
    import torch

    generator = torch.Generator().manual_seed(WEIGHT_SEED)
    tensors = {}
    for name, shape in weight_shapes(vocab_size).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            tensors[name] = torch.zeros(shape)
        else:
            tensors[name] = torch.randn(shape, generator=generator) * INIT_STD
    return tensors


def write_weights(model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Train from the seeded initialisation, write bf16 safetensors, return the training summary."""
    import torch
    from safetensors.torch import save_file

    trained, summary = train_weights(model_dir, initial_weights(vocab_size))
    tensors = {name: trained[name].detach().contiguous().to(torch.bfloat16) for name in weight_shapes(vocab_size)}
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return summary


# ---------------------------------------------------------------------------------------------
# Synthetic transcripts: the benchmarks' own requests (and variants) with the answers to learn.
# ---------------------------------------------------------------------------------------------

# The call each benchmark scenario should produce (workloads.TOOL_SCENARIOS' requests verbatim).
BENCHMARK_CALLS: dict[str, dict[str, Any]] = {
    "weather": {"city": "Lisbon", "unit": "celsius"},
    "current_time": {},
    "flight_booking": {"flight_id": "FR7402", "passenger_name": "Ana Silva"},
    "calendar_event": {
        "title": "Cache report",
        "start": "2026-12-04T10:00:00",
        "duration_minutes": 45,
        "attendees": [{"email": "ana@example.com"}, {"email": "rui@example.com"}],
        "reminders_minutes": [15, 5],
    },
}
CITIES = ("Lisbon", "Porto", "Madrid", "Paris", "Berlin", "Rome", "Vienna", "Prague", "Dublin", "Oslo",
          "Athens", "Warsaw", "Zurich", "London", "Boston", "Denver", "Tokyo", "Seoul", "Lima", "Cairo")
UNITS = ("celsius", "fahrenheit")
TIME_QUESTIONS = ("What time is it on the server?", "What is the date and time on the server?",
                  "What time is it on the server now?", "Tell me the current time on the server.")
AIRPORTS = ("LIS", "MAD", "OPO", "BCN", "CDG", "FRA", "LHR", "AMS", "FCO", "MUC", "DUB", "ZRH", "VIE",
            "CPH", "ARN", "OSL")
AIRLINES = ("TP", "FR", "IB", "LH", "AF", "KL", "VY", "BA")
PASSENGERS = ("Ana Silva", "Rui Costa", "Maria Santos", "Carlos Lopes", "Sofia Martins", "Pedro Alves",
              "Ines Rocha", "Miguel Sousa", "Laura Dias", "Tiago Neves", "Clara Mendes", "Paulo Reis")
EVENT_KINDS = ("design review", "planning meeting", "team sync", "status call", "workshop", "code review")
EVENT_TITLES = ("Cache report", "Budget plan", "Release notes", "Sprint demo", "Launch check", "Roadmap",
                "Security audit", "Hiring plan", "Load test", "Q3 goals")
FIRST_NAMES = ("ana", "rui", "maria", "carlos", "sofia", "pedro", "ines", "miguel", "laura", "tiago")
SEARCH_CALL_ID = "call_search_1"


@dataclass(frozen=True)
class Transcript:
    """A request as a benchmark sends it (messages, tools) and the assistant turn it should get."""

    group: str  # transcripts of one group start alike: they are tree-packed together
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    completion: str  # the final assistant turn, without the closing <|im_end|>


def benchmark_prompts_digest() -> str:
    """SHA-256 of the benchmark requests and answers the model learns (they are part of the recipe)."""
    from pytest_vllmgrid import workloads

    payload = {  # keys in their own order: the chat template renders tools as JSON, so order is prompt text
        "scenarios": [[s.name, s.tools, s.messages, s.expected_function] for s in workloads.TOOL_SCENARIOS.values()],
        "calls": BENCHMARK_CALLS,
        "reasoning_templates": list(workloads._REASONING_TEMPLATES),
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def strict_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools with `"strict": true` on every function, as benchmarks/test_tool_calling.py sends them."""
    return [{**tool, "function": {**tool["function"], "strict": True}} for tool in tools]


def tool_call_text(thought: str, name: str, arguments: dict[str, Any]) -> str:
    """A short reasoning section, then one hermes tool call right after `</think>` (a forced-call
    grammar admits nothing in between)."""
    call = json.dumps({"name": name, "arguments": arguments})
    return f"{thought}\n</think><tool_call>\n{call}\n</tool_call>"


def _date(rng: random.Random) -> str:
    return f"{rng.choice((2026, 2027))}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def weather_messages(system: dict[str, Any], city: str, unit: str | None) -> list[dict[str, Any]]:
    """The weather request for a city (with or without a unit)."""
    text = f"What is the weather in {city} now, in {unit}?" if unit else f"What is the weather in {city} now?"
    return [system, {"role": "user", "content": text}]


def flight_messages(system: dict[str, Any], origin: str, destination: str, date: str, passenger: str,
                    flights: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The booking request; with `flights`, after the search_flights call that found them."""
    request = f"Book the cheapest flight from {origin} to {destination} on {date} for {passenger}."
    messages = [system, {"role": "user", "content": request}]
    if flights is not None:
        search = {"origin": origin, "destination": destination, "date": date}
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": SEARCH_CALL_ID, "type": "function",
                "function": {"name": "search_flights", "arguments": json.dumps(search)}}]},
            {"role": "tool", "tool_call_id": SEARCH_CALL_ID, "content": json.dumps(flights)},
        ]
    return messages


def calendar_messages(system: dict[str, Any], minutes: int, kind: str, title: str, date: str, clock: str,
                      emails: list[str], reminders: list[int]) -> list[dict[str, Any]]:
    """The scheduling request: attendees joined with "and", reminders when there are some."""
    text = (f"Schedule a {minutes} minute {kind} titled '{title}' on {date} at {clock} with "
            f"{' and '.join(emails)}")
    text += f", with reminders {' and '.join(map(str, reminders))} minutes before." if reminders else "."
    return [system, {"role": "user", "content": text}]


def tool_transcript(name: str, rng: random.Random | None) -> Transcript:
    """The benchmark's own request of scenario `name` (rng None), or a variant with other values."""
    from pytest_vllmgrid.workloads import TOOL_SCENARIOS

    scenario = TOOL_SCENARIOS[name]
    tools = strict_tools(scenario.tools)
    system = scenario.messages[0]
    messages = scenario.messages
    arguments = BENCHMARK_CALLS[name]
    function = scenario.expected_function
    if name == "weather":
        if rng is not None:
            city, unit = rng.choice(CITIES), rng.choice((*UNITS, None))
            messages = weather_messages(system, city, unit)
            arguments = {"city": city, **({"unit": unit} if unit else {})}
        thought = "The user asks for the weather in a city, so I call get_weather."
    elif name == "current_time":
        if rng is not None:
            messages = [system, {"role": "user", "content": rng.choice(TIME_QUESTIONS)}]
        thought = "The user asks for the time on the server, so I call get_current_time."
    elif name == "flight_booking":
        if rng is None:
            flights = json.loads(messages[-1]["content"])
            passenger = arguments["passenger_name"]
        else:
            origin, destination = rng.sample(AIRPORTS, 2)
            date, passenger = _date(rng), rng.choice(PASSENGERS)
            flights = [{"flight_id": f"{rng.choice(AIRLINES)}{rng.randint(1000, 9999)}",
                        "departs": f"{date}T{rng.randint(5, 22):02d}:{rng.choice((0, 5, 10, 20, 25, 35, 40, 50)):02d}",
                        "price_eur": price}
                       for price in rng.sample(range(29, 400), rng.choice((2, 2, 3)))]
            if rng.random() < 0.3:  # the first step: search before booking
                messages = flight_messages(system, origin, destination, date, passenger, None)
                search = {"origin": origin, "destination": destination, "date": date}
                thought = "I must find the flights first, so I call search_flights."
                return Transcript(name, messages, tools, tool_call_text(thought, "search_flights", search))
            messages = flight_messages(system, origin, destination, date, passenger, flights)
        cheapest = min(flights, key=lambda flight: flight["price_eur"])
        arguments = {"flight_id": cheapest["flight_id"], "passenger_name": passenger}
        thought = "The search found the flights, so I book the cheapest one with book_flight."
    elif name == "calendar_event":
        if rng is not None:
            minutes = rng.choice((15, 30, 45, 60, 90, 120))
            kind, title = rng.choice(EVENT_KINDS), rng.choice(EVENT_TITLES)
            date, clock = _date(rng), f"{rng.randint(8, 18):02d}:{rng.choice((0, 15, 30, 45)):02d}"
            emails = [f"{first}@example.{rng.choice(('com', 'org'))}"
                      for first in rng.sample(FIRST_NAMES, rng.choice((1, 2, 2, 3)))]
            reminders = sorted(rng.sample((5, 10, 15, 30, 60), rng.choice((0, 1, 2, 2))), reverse=True)
            messages = calendar_messages(system, minutes, kind, title, date, clock, emails, reminders)
            arguments = {"title": title, "start": f"{date}T{clock}:00", "duration_minutes": minutes,
                         "attendees": [{"email": email} for email in emails],
                         **({"reminders_minutes": reminders} if reminders else {})}
        thought = "The user wants a calendar event, so I call create_calendar_event."
    else:
        raise KeyError(f"no training recipe for tool scenario {name!r}")
    return Transcript(name, messages, tools, tool_call_text(thought, function, arguments))


def _primes(low: int, high: int) -> list[int]:
    return [n for n in range(max(low, 2), high + 1) if all(n % d for d in range(2, math.isqrt(n) + 1))]


def reasoning_transcript(rng: random.Random) -> Transcript:
    """A step-by-step task in one of the benchmark's templates (numbers drawn as reasoning_tasks
    draws them), answered by a reasoning section and a one-line answer."""
    from pytest_vllmgrid.workloads import _REASONING_TEMPLATES

    index = rng.randrange(len(_REASONING_TEMPLATES))
    low = rng.randint(10, 200)
    n = {"a": rng.randint(12, 480), "b": rng.randint(12, 480), "c": rng.randint(2, 9), "d": rng.randint(1, 99),
         "v": rng.randint(40, 160), "w": rng.randint(40, 160), "p": rng.randint(5, 40), "n": rng.randint(6, 60),
         "p2": 2 * rng.randint(10, 200), "k": rng.randint(1, 9), "lo": low, "hi": low + rng.randint(20, 60)}
    a, b, c, d, v, w, p = n["a"], n["b"], n["c"], n["d"], n["v"], n["w"], n["p"]
    if index == 0:
        t1, t2 = a / v, b / w
        steps = (f"Leg one takes {a} / {v} = {t1:.2f} h and leg two takes {b} / {w} = {t2:.2f} h.\n"
                 f"The total is {a + b} km in {t1 + t2:.2f} h.")
        answer = f"The average speed is {(a + b) / (t1 + t2):.1f} km/h."
    elif index == 1:
        total = sum(a * (1 + p / 100) ** day for day in range(7))
        steps = (f"Monday sells {a} items and every day sells {p} percent more than the day before.\n"
                 f"So the days sell {a} times 1.{p:02d} to the power 0 to 6.\n"
                 f"Adding the seven days gives {total:.1f} items.")
        answer = f"The weekly total is about {round(total)} items."
    elif index == 2:
        x = -(b + d) / (a - c)
        steps = (f"Move the x terms to the left and the numbers to the right: {a}x - {c}x = -{d} - {b}.\n"
                 f"So {a - c}x = -{b + d} and x = -{b + d} / {a - c}.\n"
                 f"Check: both sides give {a * x + b:.2f}.")
        answer = f"x = {x:.3f}"
    elif index == 3:
        m = n["n"]
        steps = (f"Each of the {m} people shakes hands with the {m - 1} others.\n"
                 f"That counts every handshake twice, so the number is {m} x {m - 1} / 2.\n"
                 "For 3 people the formula gives 3, which is right.")
        answer = f"There are {m * (m - 1) // 2} handshakes."
    elif index == 4:
        k, half = n["k"], n["p2"] // 2
        width = (half - k) / 2
        steps = (f"Let the width be w, so the length is w + {k}.\n"
                 f"The perimeter gives 2(2w + {k}) = {n['p2']}, so w = {width:g} m and the length is {width + k:g} m.")
        answer = f"The area is {width * (width + k):g} square metres."
    else:
        primes = _primes(n["lo"], n["hi"])
        steps = (f"A number is prime when nothing from 2 up to its square root divides it.\n"
                 f"Checking {n['lo']} to {n['hi']} this way leaves {len(primes)} primes"
                 + (f", from {primes[0]} to {primes[-1]}." if primes else "."))
        answer = f"There are {len(primes)} primes between {n['lo']} and {n['hi']}; their sum is {sum(primes)}."
    task = _REASONING_TEMPLATES[index].format(**n)
    return Transcript("reasoning", [{"role": "user", "content": task}], None,
                      f"{steps}\n</think>\n\n{answer}")


def training_steps(rng: random.Random) -> Iterator[list[list[Transcript]]]:
    """Per step, the groups of transcripts it trains on: every tool scenario (the benchmark's request
    and TOOL_VARIANTS_PER_STEP variants) and REASONING_PER_STEP reasoning tasks."""
    from pytest_vllmgrid.workloads import TOOL_SCENARIOS

    for _ in range(TRAIN_STEPS):
        groups = [[tool_transcript(name, None)] + [tool_transcript(name, rng) for _ in range(TOOL_VARIANTS_PER_STEP)]
                  for name in TOOL_SCENARIOS]
        groups.append([reasoning_transcript(rng) for _ in range(REASONING_PER_STEP)])
        yield groups


# ---------------------------------------------------------------------------------------------
# Training: tree-packed groups, loss on the final assistant turns, deterministic on the CPU.
# ---------------------------------------------------------------------------------------------


@dataclass
class PackedGroup:
    """One sequence: the shared prefix, then each transcript's rest; a mask keeps branches apart."""

    input_ids: list[int]
    position_ids: list[int]
    branch: list[int]  # -1 for the shared prefix
    predict_at: list[int]  # row whose output predicts...
    targets: list[int]  # ...this completion token


def encode_transcript(tokenizer: Any, transcript: Transcript, im_end_id: int) -> tuple[list[int], list[int]]:
    """(prompt ids as vLLM renders and tokenizes the request, completion ids ending in <|im_end|>)."""
    prompt = tokenizer.apply_chat_template(transcript.messages, tools=transcript.tools, tokenize=False,
                                           add_generation_prompt=True)
    return (tokenizer.encode(prompt, add_special_tokens=False),
            tokenizer.encode(transcript.completion, add_special_tokens=False) + [im_end_id])


def pack_group(encoded: list[tuple[list[int], list[int]]]) -> PackedGroup:
    """Share the longest common start of the prompts (short of every first predicting row)."""
    sequences = [prompt + completion for prompt, completion in encoded]
    shared = min(len(prompt) for prompt, _ in encoded) - 1
    first = sequences[0]
    for index in range(shared):
        if any(sequence[index] != first[index] for sequence in sequences):
            shared = index
            break
    group = PackedGroup(first[:shared], list(range(shared)), [-1] * shared, [], [])
    for number, ((prompt, _), sequence) in enumerate(zip(encoded, sequences, strict=True)):
        offset = len(group.input_ids) - shared  # row of sequence index j is offset + j
        group.input_ids += sequence[shared:]
        group.position_ids += range(shared, len(sequence))
        group.branch += [number] * (len(sequence) - shared)
        for j in range(len(prompt), len(sequence)):
            group.predict_at.append(offset + j - 1)
            group.targets.append(sequence[j])
    return group


def learning_rate(step: int) -> float:
    """Linear warm-up, then a cosine decay to FINAL_LR_FRACTION of LEARNING_RATE."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, TRAIN_STEPS - WARMUP_STEPS - 1)
    return LEARNING_RATE * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_weights(model_dir: Path, initial: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the model whose configs and tokenizer are in model_dir; return (weights, summary)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(TRAIN_SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen2Config.from_pretrained(str(model_dir))
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config).float()
    missing, unexpected = model.load_state_dict(initial, strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected or model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError(f"initial weights do not fit Qwen2ForCausalLM: missing {missing}, unexpected {unexpected}")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS, eps=1e-8, weight_decay=0.0)
    rng = random.Random(TRAIN_SEED)
    cache: dict[Transcript | str, tuple[list[int], list[int]]] = {}
    losses: list[float] = []
    group_losses: dict[str, float] = {}
    examples = tokens = 0
    for step, groups in enumerate(training_steps(rng)):
        packed = []
        for group in groups:
            encoded = []
            for transcript in group:
                key = json.dumps([transcript.messages, transcript.tools, transcript.completion])
                if key not in cache:
                    cache[key] = encode_transcript(tokenizer, transcript, im_end_id)
                encoded.append(cache[key])
            packed.append((group[0].group, pack_group(encoded)))
        n_targets = sum(len(group.targets) for _, group in packed)
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate(step)
        step_loss = 0.0
        for name, group in packed:
            ids = torch.tensor([group.input_ids])
            branch = torch.tensor(group.branch)
            causal = torch.ones(len(branch), len(branch), dtype=torch.bool).tril()
            mask = causal & ((branch[None, :] == -1) | (branch[None, :] == branch[:, None]))
            hidden = model.model(input_ids=ids, position_ids=torch.tensor([group.position_ids]),
                                 attention_mask=mask[None, None], use_cache=False).last_hidden_state[0]
            logits = model.lm_head(hidden[torch.tensor(group.predict_at)])
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(group.targets), reduction="sum")
            (loss / n_targets).backward()
            step_loss += loss.item()
            group_losses[name] = loss.item() / len(group.targets)
            tokens += len(group.input_ids)
        examples += sum(len(group) for group in groups)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss / n_targets)
    model.eval()
    benchmark_loss = {}
    with torch.no_grad():
        for name in BENCHMARK_CALLS:
            prompt, completion = encode_transcript(tokenizer, tool_transcript(name, None), im_end_id)
            logits = model(input_ids=torch.tensor([prompt + completion]), use_cache=False).logits[0]
            benchmark_loss[name] = round(float(torch.nn.functional.cross_entropy(
                logits[len(prompt) - 1:-1], torch.tensor(completion))), 6)
    summary = {
        "recipe_version": RECIPE_VERSION,
        "steps": TRAIN_STEPS,
        "examples_seen": examples,
        "tokens_seen": tokens,
        "distinct_transcripts": len(cache),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 6),
        "final_group_loss": {name: round(value, 6) for name, value in sorted(group_losses.items())},
        "benchmark_request_loss": benchmark_loss,  # per token, on each tool scenario's own request
        "loss_per_step": [round(value, 5) for value in losses],
    }
    state = {name: tensor for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    return state, summary


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON with sorted keys so the bytes never depend on dict order."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: build the tiny model if needed and print its directory."""
    parser = argparse.ArgumentParser(prog="python -m pytest_vllmgrid.tinymodel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root directory")
    parser.add_argument("--write-into", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--expect-hash", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_into is not None:  # the child process of write_model
        texts = training_texts()
        if args.expect_hash and recipe_hash(texts) != args.expect_hash:
            raise SystemExit(f"recipe hash {recipe_hash(texts)} differs from the parent's {args.expect_hash}")
        started = time.perf_counter()
        summary = build_model_files(args.write_into, texts)
        print(f"tiny model trained: {summary['steps']} steps on {summary['examples_seen']} transcripts "
              f"({summary['tokens_seen']} tokens) in {time.perf_counter() - started:.1f} s with "
              f"{TRAIN_THREADS} threads, final loss {summary['final_loss']:.4f}", file=sys.stderr)
        return
    print(ensure_tiny_model(args.cache_dir))


if __name__ == "__main__":
    main()
