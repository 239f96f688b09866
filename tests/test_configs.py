"""Every shipped YAML config parses, and its header comment gives the command that runs it."""

import re
import warnings
from pathlib import Path

import pytest
import yaml

from lightning_less.cli import parse_config

# lm-eval task definitions under configs/**/tasks/ are not lightning-less configs.
REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "tasks" not in p.parts)


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_header_and_parse(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path} must begin with a comment giving the exact command"
    header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
    rel = f"configs/{path.parent.name}/{path.name}"
    # An override file names the configs it goes after: `--config base.yaml --config <this file>`.
    match = re.search(r"lightning-less ([\w-]+)((?: --config \S+)*?) --config " + re.escape(rel), header)
    assert match, f"{path}: the header must contain 'lightning-less <command> --config {rel}'"
    assert isinstance(yaml.safe_load(text), dict)
    paths = [REPO / p for p in match.group(2).split()[1::2]] + [path]
    parse_config(match.group(1), *paths)  # imports what the command needs, outside the warnings check below
    with warnings.catch_warnings():
        # The CLI itself must not warn (e.g. LightningCLI's "args parameter" warning under pytest's sys.argv).
        warnings.simplefilter("error")
        parsed = parse_config(match.group(1), *paths)  # validates every key against the signatures
    assert parsed is not None



def test_the_papers_recipe_is_one_config_per_benchmark():
    """pipeline.yaml is the MMLU recipe end to end; tydiqa.yaml / bbh.yaml override only the benchmark's ends."""
    base = REPO / "configs" / "llama2-7b" / "pipeline.yaml"
    mmlu = parse_config("pipeline", base)
    assert (mmlu.target_set.benchmark, mmlu.eval_tasks.tasks) == ("mmlu", ["mmlu"])
    for name, task in (("tydiqa", "less_tydiqa"), ("bbh", "bbh_cot_fewshot")):
        cfg = parse_config("pipeline", base, REPO / "configs" / "llama2-7b" / f"{name}.yaml")
        assert (cfg.target_set.benchmark, cfg.eval_tasks.tasks, cfg.output) == (name, [task], f"runs/llama2-7b/{name}")
        assert cfg.pool == mmlu.pool and cfg.warmup == mmlu.warmup and cfg.eval_tasks.dtype == "bfloat16"
