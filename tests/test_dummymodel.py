"""`@dummy:SHAPE` models (a published shape, the project's tokenizer, no weights) and KV prefix lengths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_vllmgrid import dummymodel
from pytest_vllmgrid.grid import GridError, load_grid

from conftest import REPO, fake_grid


def grid_file(tmp_path: Path, **top) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"configs": [{"name": "base"}], **top}))
    return path


def test_a_dummy_shape_is_served_with_load_format_dummy_under_its_own_name(tmp_path: Path) -> None:
    grid = load_grid(grid_file(tmp_path, model="@dummy:qwen3-8b"))
    config = grid.configs[0]
    assert config.params["load_format"] == "dummy" and "--load-format" in config.vllm_args()
    assert config.model_name == "dummy-qwen3-8b"


def test_an_unknown_dummy_shape_names_the_field_the_allowed_models_and_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(GridError) as err:
        load_grid(grid_file(tmp_path, model="@dummy:qwen3-8"))
    message = str(err.value)
    assert "grid field 'model' = '@dummy:qwen3-8'" in message and "@tiny" in message
    assert "did you mean @dummy:qwen3-8b" in message


def test_a_dummy_shape_with_another_load_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"defaults.load_format' = 'auto'.*no weights; allowed: 'dummy'"):
        load_grid(grid_file(tmp_path, model="@dummy:qwen3-8b", defaults={"load_format": "auto"}))


def test_the_dummy_directory_has_the_published_shape_and_a_working_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    path = dummymodel.ensure_dummy_model("@dummy:qwen3-8b", cache_dir=tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["max_position_embeddings"]) == (4096, 36, 32, 8, 40960)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tokenizer.get_vocab_size(with_added_tokens=True) <= config["vocab_size"]
    assert tokenizer.decode(tokenizer.encode("prefix caching on an H200").ids) == "prefix caching on an H200"
    assert not list(path.glob("*.safetensors"))  # no weights: vLLM draws them (load_format dummy)
    assert dummymodel.ensure_dummy_model("@dummy:qwen3-8b", cache_dir=tmp_path) == path  # cached
    assert json.loads((path / "tokenizer_config.json").read_text())["model_max_length"] == 40960


def test_the_gpu_grid_loads_with_its_prefix_lengths() -> None:
    grid = load_grid(REPO / "configs" / "h200.yaml")
    assert grid.names == ["baseline", "prefix_caching", "chunked_prefill"]
    assert all(c.params["enforce_eager"] is False and c.params["max_model_len"] >= 32000 for c in grid.configs)
    assert grid.spec.benchmarks["kv_prefix_tokens"] == [4000, 16000, 32000]


@pytest.mark.parametrize("prefixes, expected", [
    (None, ["test_kv_cache[base]"]),
    ([64, 128], ["test_kv_cache[64-base]", "test_kv_cache[128-base]"]),
])
def test_kv_prefix_tokens_makes_one_kv_cache_test_per_length(pytester, write_grid, prefixes, expected) -> None:
    shutil.copy(REPO / "benchmarks" / "test_kv_cache.py", pytester.path / "test_kv_cache.py")
    benchmarks = {"kv_prefix_tokens": prefixes} if prefixes else {}
    grid = write_grid(fake_grid([{"name": "base"}], benchmarks=benchmarks))
    result = pytester.runpytest_subprocess("--grid", str(grid), "--co", "-q", "-p", "no:cacheprovider")
    collected = [line.split("::", 1)[1] for line in result.outlines if "::" in line]
    assert collected == expected
