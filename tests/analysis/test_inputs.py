"""Reading a selection's pool and target records: explicit files, recorded ones, and changed ones."""

from __future__ import annotations

from lightning_less.analysis.inputs import load_targets
from lightning_less.data.records import as_paths, files_fingerprint
from tests.analysis.selections import make_targets


def test_paths_from_manifest_entries(tmp_path):
    assert as_paths(None) == [] and as_paths("a.jsonl") == ["a.jsonl"] and as_paths(tmp_path) == [str(tmp_path)]
    assert as_paths([{"path": "a", "sha256": "x"}, "b"]) == ["a", "b"]
    # Targets recorded as fingerprints (as the pipeline writes them); a changed file is read with a warning.
    targets = make_targets(tmp_path)
    manifest = {"inputs": {"targets": files_fingerprint([targets])}}
    warnings: list[str] = []
    records, _ = load_targets(manifest, None, warnings)
    assert len(records) == 5 and warnings == []
    with open(targets, "a", encoding="utf-8") as f:
        f.write('{"prompt": "p", "completion": "c", "subtask": "arith"}\n')
    records, _ = load_targets(manifest, None, warnings)
    assert len(records) == 6 and len(warnings) == 1 and "changed" in warnings[0]
