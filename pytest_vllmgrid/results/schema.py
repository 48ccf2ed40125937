"""Readers for every schema version on disk: old runs keep working with --resume, --vllm-compare and
`vllmgrid compare`.

Version 1 (until 2026-12): the same shapes without metric validity; test records could carry keys the
plugin wrote ad hoc. Version 2: `results.models` as dumped. A reader upgrades a raw document in place to
the current version before validation.
"""

from __future__ import annotations

from pydantic import JsonValue, ValidationError

from pytest_vllmgrid.results.models import SCHEMA_VERSION, ConfigResult, RunManifest

_TEST_KEYS_V1 = {"status", "message", "duration_s", "measurement", "thresholds", "regression_gate",
                 "ttft_cache_miss_ms", "ttft_cache_hit_ms", "cache_acceleration", "gain_percentage"}
_MEASUREMENT_KEYS_V1 = {"method", "metrics", "samples", "server", "info", "warnings", "settings",
                        "telemetry_series"}


class SchemaError(ValueError):
    """A results file that no reader understands, naming the file and the field."""


def _upgrade_v1(data: dict[str, JsonValue]) -> None:
    """v1 -> v2: metric validity defaults to valid; unknown ad-hoc test keys are kept under measurement.info."""
    for test in (data.get("tests") or {}).values():
        if not isinstance(test, dict):
            continue
        stray = {k: test.pop(k) for k in list(test) if k not in _TEST_KEYS_V1}
        meas = test.get("measurement")
        if isinstance(meas, dict):
            for key in [k for k in meas if k not in _MEASUREMENT_KEYS_V1]:
                stray[key] = meas.pop(key)
            if stray:
                meas.setdefault("info", {}).setdefault("v1_fields", stray)
    data["schema_version"] = 2


_UPGRADES = {1: _upgrade_v1}


def read_config_result(data: dict[str, JsonValue], source: str = "results file") -> ConfigResult:
    """A stored config result of any known schema version, as the current model."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise SchemaError(f"{source}: schema_version {version!r} is newer than this pytest-vllmgrid "
                          f"understands (1..{SCHEMA_VERSION}); upgrade pytest-vllmgrid")
    while version < SCHEMA_VERSION:
        _UPGRADES[version](data)
        version += 1
    try:
        return ConfigResult.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SchemaError(f"{source}: field {loc!r}: {err['msg']}") from None


def read_manifest(data: dict[str, JsonValue], source: str = "manifest.json") -> RunManifest:
    """A stored run manifest of any known version."""
    try:
        return RunManifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SchemaError(f"{source}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None
