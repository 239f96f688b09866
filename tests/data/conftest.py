"""Shared fixtures of the data-layer tests: the offline char tokenizer and jsonl writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def char_tokenizer():
    """The offline character-level tokenizer (one id per character, special tokens and role tags)."""
    from lightning_less.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def write_jsonl(tmp_path: Path):
    """``write_jsonl(name, rows)``: a jsonl file of ``rows`` (dicts are dumped, strings written as is)."""

    def write(name: str, rows: list, newline: str = "\n") -> str:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
        path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
        return str(path)

    return write
