"""Generate the tiny local Qwen2 model that the default CPU grid serves (no weights downloaded)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

RECIPE_VERSION = "tiny-qwen2/1"
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
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
)


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
    """Build the tiny model unless already cached, and return its directory."""
    texts = training_texts()
    models_dir = resolve_cache_dir(cache_dir) / "models"
    target = models_dir / f"{MODEL_NAME_PREFIX}-{recipe_hash(texts)}"
    if is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
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
    return target


def write_model(model_dir: Path, texts: list[str]) -> None:
    """Write every file of the model into an existing, empty directory."""
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
    write_weights(model_dir / "model.safetensors", vocab_size)


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


def write_weights(path: Path, vocab_size: int) -> None:
    """Write seeded random bf16 weights (norms one, biases zero) as safetensors."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(WEIGHT_SEED)
    tensors = {}
    for name, shape in weight_shapes(vocab_size).items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape)
        elif name.endswith(".bias"):
            tensor = torch.zeros(shape)
        else:
            tensor = torch.randn(shape, generator=generator) * INIT_STD
        tensors[name] = tensor.to(torch.bfloat16)
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON with sorted keys so the bytes never depend on dict order."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: build the tiny model if needed and print its directory."""
    parser = argparse.ArgumentParser(prog="python -m pytest_vllmgrid.tinymodel", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root directory")
    args = parser.parse_args(argv)
    print(ensure_tiny_model(args.cache_dir))


if __name__ == "__main__":
    main()
