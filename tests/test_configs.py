"""Every shipped YAML config parses, and its header comment gives the command that runs it."""

import re
import warnings
from pathlib import Path

import pytest
import yaml

from lightning_less.cli import parse_config

# lm-eval task definitions under configs/**/tasks/ are not lightning-less configs.
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if "tasks" not in p.parts)


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_header_and_parse(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path} must begin with a comment giving the exact command"
    header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
    rel = f"configs/{path.parent.name}/{path.name}"
    match = re.search(r"lightning-less ([\w-]+) --config " + re.escape(rel), header)
    assert match, f"{path}: the header must contain 'lightning-less <command> --config {rel}'"
    assert isinstance(yaml.safe_load(text), dict)
    parse_config(match.group(1), path)  # imports what the command needs, outside the warnings check below
    with warnings.catch_warnings():
        # The CLI itself must not warn (e.g. LightningCLI's "args parameter" warning under pytest's sys.argv).
        warnings.simplefilter("error")
        parsed = parse_config(match.group(1), path)  # validates every key against the signatures
    assert parsed is not None

