"""The results package: typed models (`models`), readers of every schema version (`schema`) and the
results directory (`store`). Everything a run stores, the judge fills and the reports and gate read."""

from pytest_vllmgrid.results.models import (HIGHER, LOWER, SCHEMA_VERSION, ConfigResult, DeploymentRecord,
                                            ErrorLine, GateRecord, GateVerdict, JsonObject, Machine, Measurement,
                                            Metric, ResumeRecord, RunManifest, TestResult, Validity, Verdict,
                                            gate_machine_notes, placement_note)
from pytest_vllmgrid.results.schema import SchemaError, read_config_result, read_manifest
from pytest_vllmgrid.results.store import (MANIFEST, ResultsStore, default_results_dir, elapsed_since,
                                           new_config_result, now_iso, result_key)

__all__ = ["HIGHER", "LOWER", "SCHEMA_VERSION", "ConfigResult", "DeploymentRecord", "ErrorLine", "GateRecord",
           "GateVerdict", "JsonObject", "Machine", "Measurement", "Metric", "placement_note", "gate_machine_notes", "ResumeRecord", "RunManifest", "TestResult", "Validity",
           "Verdict", "SchemaError", "read_config_result", "read_manifest", "MANIFEST", "ResultsStore",
           "default_results_dir", "elapsed_since", "new_config_result", "now_iso", "result_key"]
