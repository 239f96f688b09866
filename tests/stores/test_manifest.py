"""Two stores from different snapshots: one short paragraph naming the first differing file; the full list in ``details``."""

from __future__ import annotations

import hashlib

from lightning_less.errors import IncompatibleError
from lightning_less.stores.manifest import snapshot_mismatch

FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer_moments.safetensors", "snapshot.json")


def _info(run: str, names=("epoch_000", "epoch_001", "epoch_002", "epoch_003"), same=()) -> list[dict]:
    """snapshot_info as a gradient pass records it; files in ``same`` hash alike for every run."""
    return [{"name": n, "epoch": i, "lr": 1e-3, "sha256": {f: hashlib.sha256(f"{'x' if f in same else run}{n}{f}".encode())
                                                           .hexdigest() for f in FILES}} for i, n in enumerate(names)]


def test_sixteen_differing_files_make_one_short_paragraph_and_full_details():
    a, b = _info("a", same=("adapter_config.json",)), _info("b", same=("adapter_config.json",))
    err = snapshot_mismatch(a, b, "--pool_store p", "--target_store t")
    assert isinstance(err, IncompatibleError)
    first_a, first_b = a[0]["sha256"]["adapter_model.safetensors"], b[0]["sha256"]["adapter_model.safetensors"]
    message = str(err)
    assert message.startswith("--pool_store p and --target_store t were computed from different snapshots: "
                              f"epoch_000/adapter_model.safetensors has sha256 {first_a[:12]}… in the first and "
                              f"{first_b[:12]}… in the second; 11 other snapshot files differ too (--debug lists them all)")
    assert "Compute both stores from the same warmup's snapshots" in message
    assert first_a not in message and len(message) < 500 and "\n" not in message  # no digest in full, no list
    details = err.details.splitlines()
    assert len(details) == 12 and details[0] == f"epoch_000/adapter_model.safetensors: {first_a} != {first_b}"
    assert not any("adapter_config.json" in line for line in details)  # identical files are not listed


def test_one_differing_file_names_it_alone():
    a, b = _info("a"), _info("a")
    b[1]["sha256"]["snapshot.json"] = "f" * 64
    message = str(snapshot_mismatch(a, b, "A", "B"))
    assert "epoch_001/snapshot.json has sha256" in message and "ffffffffffff… in the second. Compute" in message
    assert "other" not in message
    assert snapshot_mismatch(a, _info("a"), "A", "B") is None


def test_other_snapshot_names_or_counts_are_named():
    a, b = _info("a", names=("epoch_000", "epoch_001")), _info("a", names=("epoch_000", "epoch_002"))
    assert "snapshot 2 is epoch_001 in the first and epoch_002 in the second" in str(snapshot_mismatch(a, b, "A", "B"))
    short = _info("a", names=("epoch_000",))
    assert "snapshot 2 is epoch_001 in the first and <none> in the second" in str(snapshot_mismatch(a, short, "A", "B"))
