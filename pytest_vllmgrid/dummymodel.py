"""Model directories of a named production shape without weights, for vLLM's `load_format: dummy`.

`model: "@dummy:qwen3-8b"` in a grid serves a model with Qwen3-8B's architecture (layers, heads, hidden
and MLP sizes, context length, bf16) and random weights that vLLM draws itself: the GPU does the same
work per token as the real model (same KV-cache bytes per token, same kernels, same CUDA graphs), so
serving-side figures (TTFT, prefix-cache gain, throughput, memory) have the real model's shape, while
nothing is downloaded. The directory holds config.json, generation_config.json and the project's own
tiny tokenizer (tinymodel.py; vocabulary 4096 instead of 151,936 — the embedding and LM head are
smaller than the real model's, about 1.2 GB of 16 GB); answers are random tokens, so quality figures
(tool-call success, reasoning answers) mean nothing on it.

Built in well under a second (the tokenizer's training), cached under the project's cache directory by
a hash of the shape and the tokenizer's recipe, written to a staging directory then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_vllmgrid import tinymodel as tm

PREFIX = "@dummy:"
LOAD_FORMAT = "dummy"
RECIPE_VERSION = "dummy/1"  # bump on any change below that changes the files' bytes

def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> dict[str, Any]:
    """A Qwen3 dense shape: 8 KV heads of 128, a 40,960-token context, bf16."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
            "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": tied, "torch_dtype": "bfloat16"}


# Published shapes (the models' config.json on the hub), without the vocabulary: ours is the tiny one's.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, tied=False),
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, tied=True),
}
FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def is_dummy(model: str) -> bool:
    """Whether a grid's `model` names a dummy-weight shape."""
    return model.startswith(PREFIX)


def shape_name(model: str) -> str:
    """'@dummy:qwen3-8b' -> 'qwen3-8b'."""
    return model[len(PREFIX):]


def served_name(model: str) -> str:
    """The name the server answers to by default: 'dummy-qwen3-8b'."""
    return f"dummy-{shape_name(model)}"


def model_config(shape: str, vocab_size: int, eos_id: int) -> dict[str, Any]:
    """The transformers config.json of the named shape, with our tokenizer's vocabulary and ids."""
    return {
        **SHAPES[shape], "vocab_size": vocab_size, "hidden_act": "silu", "initializer_range": 0.02,
        "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": SHAPES[shape]["num_hidden_layers"], "use_cache": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id,
    }


def recipe_hash(shape: str, texts: list[str]) -> str:
    """What decides the directory's bytes: this module's recipe, the shape, and the tokenizer's recipe."""
    payload = {"version": RECIPE_VERSION, "shape": SHAPES[shape], "tokenizer": tm.recipe_hash(texts)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def ensure_dummy_model(model: str, cache_dir: Path | None = None) -> Path:
    """Build the directory of '@dummy:SHAPE' unless cached, and return it."""
    shape = shape_name(model)
    if shape not in SHAPES:
        raise ValueError(f"unknown dummy shape {shape!r}; allowed: {', '.join(sorted(SHAPES))}")
    texts = tm.training_texts()
    models_dir = tm.resolve_cache_dir(cache_dir) / "models"
    target = models_dir / f"dummy-{shape}-{recipe_hash(shape, texts)}"
    if all((target / name).is_file() for name in FILES):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=models_dir))
    try:
        write_files(staging, shape, texts)
        try:
            staging.rename(target)
        except OSError:  # another builder renamed first: its files are the same bytes
            if not all((target / name).is_file() for name in FILES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_files(model_dir: Path, shape: str, texts: list[str]) -> None:
    """config, generation config and the tiny model's tokenizer, sized to the shape's context."""
    tokenizer = tm.train_tokenizer(texts)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    vocab_size = tm.padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True))
    eos_id, im_end_id = tokenizer.token_to_id(tm.EOS_TOKEN), tokenizer.token_to_id(tm.IM_END)
    tm.write_json(model_dir / "config.json", model_config(shape, vocab_size, eos_id))
    tm.write_json(model_dir / "generation_config.json", {"eos_token_id": [im_end_id, eos_id], "pad_token_id": eos_id})
    tokenizer_config = tm.tokenizer_config()
    tokenizer_config["model_max_length"] = SHAPES[shape]["max_position_embeddings"]
    tm.write_json(model_dir / "tokenizer_config.json", tokenizer_config)
