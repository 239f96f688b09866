"""A failure on one rank reaches every rank before the next collective: the same error everywhere, never a hang.

Two gloo processes each; a rank that failed alone used to leave its peer waiting in a collective
(the scoring's ``all_reduce``, the store writer's barrier after the merge). Each script catches
the error, records its message, then meets its peer at one more collective, as a process that
goes on (a Lightning teardown, a user's ``try``) would: a rank still waiting elsewhere makes
that a hang, which the timeout turns into a failure.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_less.distributed import on_rank_zero, shared_failure
from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import run_two_ranks

N, DIM, ZERO_ROW = 41, 12, 30  # block size 6: rank 0 scores rows 0-17, rank 1 rows 18-40
LABELS = ["a", "a", "b"]


class TinyPass(pl.LightningModule):
    """A StorePass whose row is each example's mean token id: enough to exercise the writer and its merge."""

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir, self.overwrite = Path(output_dir), False
        self.store, self.skip, self.done = None, False, {}
        self.weight = torch.nn.Parameter(torch.ones(1))

    def configure_callbacks(self):
        from lightning_less.callbacks.store_writer import ShardedStoreWriter

        return [ShardedStoreWriter("tiny store")]

    def store_spec(self, data):
        return {"feature_kind": "sgd", "projector": {"kind": "none"}}, ["only"], [1], "float32"

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        from lightning_less.callbacks.store_writer import batch_rows

        index = batch_rows(self.trainer, batch)
        values = batch["input_ids"].float().mean(dim=1, keepdim=True).numpy()
        return {"rows": [("only", 1, index, values)]}


def tiny_loader() -> DataLoader:
    items = [{"input_ids": torch.tensor([i + 1, i + 2, i + 3]), "attention_mask": torch.ones(3, dtype=torch.long),
              "labels": torch.tensor([-100, i + 2, i + 3])} for i in range(8)]
    return DataLoader(items, batch_size=2)


def _outcomes(tmp_path: Path) -> list[str]:
    return [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]


def test_a_zero_row_on_one_rank_raises_the_same_error_on_both(tmp_path):
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(N, DIM)).astype(np.float32)
    pool[ZERO_ROW] = 0.0  # in rank 1's rows only
    np.save(tmp_path / "pool.npy", pool)
    np.save(tmp_path / "targets.npy", rng.normal(size=(len(LABELS), DIM)).astype(np.float32))
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, torch.distributed as dist
        from lightning_less.selection.scoring import influence_scores
        dist.init_process_group("gloo")
        try:
            influence_scores([np.load({str(tmp_path / 'pool.npy')!r})], [np.load({str(tmp_path / 'targets.npy')!r})],
                             [1.0], {LABELS!r}, block_size=6, distributed=True)
            outcome = "scored"
        except ValueError as err:
            outcome = f"{{type(err).__name__}}: {{err}}"
        open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.txt", "w").write(outcome)
        dist.barrier()
        dist.destroy_process_group()
    """))
    run_two_ranks(script, timeout=120)
    first, second = _outcomes(tmp_path)
    assert first == second, (first, second)
    assert first.startswith("ValueError: pool features of snapshot 0: 1 row(s)") and f"rows {ZERO_ROW})" in first
    assert first.endswith("(rank 1 of 2)")


def test_excluded_rows_are_not_scored_and_never_refused(tmp_path):
    """The same pool with the zero row excluded: scored on both ranks, NaN on that row, the rest as one process."""
    from lightning_less.selection.scoring import influence_scores

    rng = np.random.default_rng(0)
    pool = rng.normal(size=(N, DIM)).astype(np.float32)
    pool[ZERO_ROW] = 0.0
    targets = rng.normal(size=(len(LABELS), DIM)).astype(np.float32)
    whole = influence_scores([pool], [targets], [1.0], LABELS, exclude=[ZERO_ROW])
    assert np.isnan(whole.score[ZERO_ROW]) and np.isnan(whole.per_subtask[ZERO_ROW]).all()
    kept = np.delete(np.arange(N), ZERO_ROW)
    alone = influence_scores([pool[kept]], [targets], [1.0], LABELS)
    np.testing.assert_allclose(whole.per_subtask[kept], alone.per_subtask, rtol=1e-6)
    with pytest.raises(ValueError, match="zero or non-finite"):
        influence_scores([pool], [targets], [1.0], LABELS)


def test_a_failed_merge_on_rank_zero_raises_on_every_rank(tmp_path):
    script = tmp_path / "merge.py"
    script.write_text(textwrap.dedent(f"""
        import lightning.pytorch as pl, torch
        from lightning_less.stores.datastore import GradientDatastore
        from tests.faults.test_rank_agreement import TinyPass, tiny_loader

        def broken_merge(shards, out, overwrite=False):
            raise OSError("the merge failed: disk gone")

        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        if trainer.global_rank == 0:
            GradientDatastore.merge_shards = staticmethod(broken_merge)
        try:
            trainer.predict(TinyPass({str(tmp_path / 'store')!r}), dataloaders=tiny_loader(), return_predictions=False)
            outcome = "merged"
        except Exception as err:
            outcome = f"{{type(err).__name__}}: {{err}}"
        open({str(tmp_path)!r} + f"/rank{{trainer.global_rank}}.txt", "w").write(outcome)
        torch.distributed.barrier()
    """))
    run_two_ranks(script, timeout=180)
    first, second = _outcomes(tmp_path)
    assert first == second == "OSError: the merge failed: disk gone (rank 0 of 2)", (first, second)
    assert not (tmp_path / "store" / "manifest.json").exists()  # no store looks complete
    assert (tmp_path / "store.shards").is_dir()  # the shards stay: a rerun merges them


def test_the_tiny_pass_under_ddp_equals_one_process(tmp_path):
    """The merge the failing test breaks works: two ranks give the one-process store."""
    script = tmp_path / "ok.py"
    script.write_text(textwrap.dedent(f"""
        import lightning.pytorch as pl
        from tests.faults.test_rank_agreement import TinyPass, tiny_loader
        pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False).predict(
            TinyPass({str(tmp_path / 'ddp')!r}), dataloaders=tiny_loader(), return_predictions=False)
    """))
    run_two_ranks(script, timeout=180)
    pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).predict(
        TinyPass(str(tmp_path / "one")), dataloaders=tiny_loader(), return_predictions=False)
    ddp, one = GradientDatastore.open(tmp_path / "ddp"), GradientDatastore.open(tmp_path / "one")
    np.testing.assert_array_equal(np.asarray(ddp.features("only", 1)), np.asarray(one.features("only", 1)))


def test_without_a_process_group_both_helpers_are_plain_calls():
    assert on_rank_zero(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="kept"):
        with shared_failure():
            raise KeyError("kept")
