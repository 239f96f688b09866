"""Under DDP the store writer's log gives each rank's own share of the rows, not the whole dataset's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lightning_less.callbacks import store_writer
from lightning_less.callbacks.store_writer import ShardedStoreWriter, shard_dir

NAMES, DIMS = ["epoch_000", "epoch_001"], [4]
N_RECORDS, DROPPED = 7, [3]  # record 3 has no response token: excluded, in no rank's share


class Dataset(SimpleNamespace):
    def __len__(self) -> int:  # the examples kept (dropped records are not in the dataset)
        return N_RECORDS - len(DROPPED)


class Strategy:
    """Rank 0's value for what only rank 0 computes (the store spec), as a broadcast gives every rank."""

    def __init__(self, spec) -> None:
        self.spec = spec

    def broadcast(self, obj, src=0):
        return self.spec if obj is None else obj

    def barrier(self):
        pass


def _start(tmp_path, rank, world_size, done_before=()):
    """``on_predict_start`` of one rank, with a fake trainer; returns the module (its shard store is open)."""
    dataset = Dataset(records=list(range(N_RECORDS)), dropped=[SimpleNamespace(index=i) for i in DROPPED])
    manifest = {"feature_kind": "adam", "projector": {"kind": "test"}, "excluded_indices": DROPPED}
    spec = (manifest, NAMES, DIMS, "float32")
    module = SimpleNamespace(output_dir=tmp_path / "store", overwrite=False, store=None, skip=False, done={},
                             store_spec=lambda ds: spec)
    trainer = SimpleNamespace(strategy=Strategy(spec), is_global_zero=rank == 0, world_size=world_size, global_rank=rank,
                              datamodule=SimpleNamespace(_dataset=lambda stage: dataset))
    if done_before:  # an earlier, interrupted run of this rank
        ShardedStoreWriter().on_predict_start(trainer, module)
        for name in NAMES:
            module.store.write(name, DIMS[0], list(done_before), np.ones((len(done_before), DIMS[0]), np.float32))
            module.store.mark_done(name, list(done_before))
        module.store.close()
    ShardedStoreWriter().on_predict_start(trainer, module)
    return module


def _expected(rank, world_size, done):
    """Brute force: the rows of this rank's sampler positions (dataset order skips the dropped record) not yet done."""
    kept = [i for i in range(N_RECORDS) if i not in DROPPED]
    share = [kept[p] for p in range(rank, len(kept), world_size)]
    return sum(1 for name in NAMES for i in share if not done[name][i])


@pytest.mark.parametrize(("rank", "world_size", "done_before"), [
    # Records kept: 0, 1, 2, 4, 5, 6. Rank 0 of 2 computes records 0, 2, 5 and rank 1 records 1, 4, 6.
    (0, 1, ()), (0, 1, (0, 5)), (0, 2, ()), (1, 2, ()), (0, 2, (0, 5)), (1, 2, (1, 4, 6)),
])
def test_rows_to_compute_are_this_ranks_share(tmp_path, monkeypatch, rank, world_size, done_before):
    said: list[str] = []
    monkeypatch.setattr(store_writer, "rank_zero_info", said.append)
    module = _start(tmp_path, rank, world_size, done_before)
    module.store.close()
    left = _expected(rank, world_size, module.done)
    assert f"({left} rows to compute on rank {rank})" in said[-1], said
    if world_size > 1:
        assert module.store.path == shard_dir(tmp_path / "store", rank, world_size)
