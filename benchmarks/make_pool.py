"""Write a synthetic jsonl pool of short records (and a small target file) for memory and time checks.

    python benchmarks/make_pool.py --n 1000000 --out /tmp/pool_1m.jsonl --targets /tmp/targets.jsonl

Records cycle through the three formats (messages, prompt/completion, alpaca), ~150 bytes
each, with words drawn from a 5,000-word vocabulary by a seeded generator.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

WORDS = [f"w{i}" for i in range(5000)]


def record(i: int, words: list[str]) -> dict:
    prompt, answer = " ".join(words[:12]), " ".join(words[12:])
    if i % 3 == 0:
        return {"id": f"r{i}", "dataset": f"src{i % 7}",
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    if i % 3 == 1:
        return {"id": f"r{i}", "dataset": f"src{i % 7}", "prompt": prompt, "completion": answer}
    return {"id": f"r{i}", "dataset": f"src{i % 7}", "instruction": prompt, "input": "", "output": answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--targets", default=None, help="also write 60 target records (3 subtasks) here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for start in range(0, args.n, 10_000):
            picks = rng.integers(0, len(WORDS), size=(min(10_000, args.n - start), 18))
            for j, row in enumerate(picks):
                f.write(json.dumps(record(start + j, [WORDS[w] for w in row])) + "\n")
    if args.targets:
        with open(args.targets, "w", encoding="utf-8") as f:
            for i in range(60):
                words = [WORDS[w] for w in rng.integers(0, 300 * (1 + i % 3), size=18)]
                f.write(json.dumps({"subtask": f"task{i % 3}", "prompt": " ".join(words[:12]),
                                    "completion": " ".join(words[12:])}) + "\n")


if __name__ == "__main__":
    main()
