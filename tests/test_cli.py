"""The ``lightning-less`` command line: help, version, one printed result, errors as messages, README commands."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_less.cli import COMMANDS, TRAINER, error_message, load_command, main, print_result
from lightning_less.errors import MissingInputError
from lightning_less.version import __version__
from tests.helpers import qa_records, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_COMMANDS = {"fit", "validate", "test", "predict", "pipeline", "select", "compare", "report", "inspect",
                     "demo", "demo-data", "tiny-model", "targets", "evaluate"}
OWN_COMMANDS = ("pipeline", "demo", "demo-data", "tiny-model")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", **extra}
    env.pop("LIGHTNING_LESS_DEBUG", None)
    return env


def _lightning_less(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_less.cli", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LIGHTNING_LESS_DEBUG", raising=False)


# ---------------------------------------------------------------------- help and version
def test_help_lists_every_command_with_its_description(wide, capsys):
    assert set(COMMANDS) == EXPECTED_COMMANDS
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: lightning-less ")
    for name, (_, description) in COMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(description)}$", out, re.M), name


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out == f"lightning-less {__version__}\n"


def test_help_and_version_import_neither_torch_nor_lightning():
    code = textwrap.dedent("""
        import sys
        from lightning_less.cli import main
        main(["--help"])
        main(["--version"])
        print(sorted(m for m in ("torch", "lightning", "transformers", "jsonargparse", "numpy") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", ["pipeline", "demo-data", "fit"])
def test_usage_names_the_command(wide, capsys, name):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    if COMMANDS[name][0] == TRAINER:  # LightningCLI: global options may come before the command
        assert usage.startswith("usage: lightning-less [options] fit ")
    else:
        assert usage.startswith(f"usage: lightning-less {name} [-h] [--config CONFIG]")


def test_pipeline_help_shows_every_setting_with_its_docstring(wide, capsys):
    from lightning_less.recipes import settings

    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    source = inspect.getsource(settings)
    for group, cls in [("warmup", settings.WarmupSettings), ("features", settings.FeatureSettings),
                       ("selection", settings.SelectionSettings), ("train", settings.TrainSettings)]:
        for field in dataclasses.fields(cls):
            assert f"--{group}.{field.name} " in out
            # The field's attribute docstring (the line after its declaration) is its help text.
            doc = re.search(rf"^    {field.name}: .*\n    \"\"\"(.+?)\"\"\"", source, re.M)
            assert doc, f"{cls.__name__}.{field.name} has no attribute docstring"
            assert " ".join(doc.group(1).split()) in out, f"--{group}.{field.name}"


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {n for n, (t, _) in COMMANDS.items() if t == TRAINER}))
def test_each_command_is_a_documented_keyword_function(name):
    fn = load_command(name)
    params = inspect.signature(fn).parameters.values()
    assert all(p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params), name
    assert all(p.annotation is not inspect.Parameter.empty for p in params), name
    args = (inspect.getdoc(fn) or "").partition("Args:")[2]
    for p in params:
        assert re.search(rf"^\s+{p.name}:", args, re.M), f"{name}: parameter {p.name} is not in the docstring's Args"


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["selct"])
    assert exit_.value.code == 2 and "did you mean 'select'" in capsys.readouterr().err


# ---------------------------------------------------------------------- printed results
def test_result_is_printed_once_as_json_and_progress_goes_to_stderr(tmp_path, capsys, monkeypatch):
    import lightning_less.data.demo as demo_module

    generate = demo_module.generate_demo_data

    def chatty(*args, **kwargs):
        print("writing: 50%")  # as a progress bar or a library would, on stdout
        return generate(*args, **kwargs)

    monkeypatch.setattr(demo_module, "generate_demo_data", chatty)
    main(["demo-data", "--output", str(tmp_path / "d"), "--pool_size", "30"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # a second print, or progress on stdout, would make this invalid JSON
    assert "writing: 50%" in captured.err
    assert set(printed) == {"pool", "targets", "eval"}
    assert sum(len(Path(p).read_text().splitlines()) for p in printed["pool"]) == 30


def test_rich_results_fit_the_terminal(monkeypatch, capsys):
    from lightning_less.recipes.demo import DemoResult

    row = {"n_selected": 120, "target_share": 1.0, "surface_share": 0.2, "target_loss": 0.9151, "target_exact_match": 0.15}
    result = DemoResult({"less": row, "random": dict(row, target_share=0.05)}, "last_letter", 12.0,
                        Path("demo_output/results.json"))
    monkeypatch.setenv("COLUMNS", "60")
    print_result(result)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 60
    assert "0.915" in out and "random" in out and "demo_output/results.json" in out and "DemoResult(" not in out


def test_lightning_tips_are_dropped():
    import lightning.pytorch as pl

    from lightning_less.console import setup_logging

    setup_logging()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    try:
        pl.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    finally:
        logger.removeHandler(handler)
    assert any("GPU available" in m for m in seen)  # Lightning's other lines still arrive
    assert not any("Tip" in m for m in seen), seen


# ---------------------------------------------------------------------- errors
@pytest.fixture()
def small_data(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(12, prefix="p"))
    targets = write_jsonl(tmp_path / "targets.jsonl", [dict(r, subtask="s") for r in qa_records(3, prefix="t")])
    return str(pool), str(targets)


def test_an_expected_error_is_one_paragraph_and_exit_2(tmp_path, small_data):
    pool, targets = small_data
    done = _lightning_less("pipeline", "--pool", str(tmp_path / "missing.jsonl"), "--targets", targets,
                           "--output", str(tmp_path / "run"))
    assert done.returncode == 2 and done.stdout == ""
    err = done.stderr.strip()
    assert err.startswith("error: --pool: ") and "missing.jsonl does not exist" in " ".join(err.split())
    assert "\n\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path, small_data, monkeypatch):
    pool, targets = small_data
    args = ["pipeline", "--pool", str(tmp_path / "missing.jsonl"), "--targets", targets, "--output", str(tmp_path / "run")]
    done = _lightning_less(*args[:2], "--debug", *args[2:])  # --debug anywhere on the command line
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "MissingInputError" in done.stderr
    monkeypatch.setenv("LIGHTNING_LESS_DEBUG", "1")
    with pytest.raises(MissingInputError):
        main(args)


def test_budget_larger_than_the_pool_fails_before_the_warmup(tmp_path, small_data, capsys, wide):
    pool, targets = small_data
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "--pool", pool, "--targets", targets, "--output", str(out), "--max_length", "64",
              "--selection.count", "13"])
    assert exit_.value.code == 2
    assert "budget count 13 exceeds the pool size 12" in capsys.readouterr().err
    assert not (out / "warmup").exists() and not out.exists()


def test_a_trainer_command_on_a_bad_jsonl_is_an_error_message(tmp_path, monkeypatch, capsys, wide):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + '{"prompt": "p",\n')
    monkeypatch.chdir(tmp_path)  # the config's relative output paths land here
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / "configs/tiny/fit.yaml"), "--data.init_args.train_files", json.dumps([str(bad)]),
              "--data.init_args.val_files", "null", "--trainer.enable_progress_bar", "false"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    paragraph = err[err.index("\nerror: ") + 1:]  # the last thing written, after Lightning's own lines
    assert f"error: {bad}:2: malformed JSON" in " ".join(paragraph.split()) and "Traceback" not in err


def test_error_message_is_one_wrapped_paragraph(monkeypatch):
    assert error_message(FileNotFoundError(2, "No such file or directory", "a.jsonl")) == \
        "error: a.jsonl: No such file or directory"
    monkeypatch.setenv("COLUMNS", "40")
    long_path = "/very/long/" + "x" * 60 + ".jsonl"
    text = error_message(MissingInputError(f"{long_path} is gone:\n  run the warmup first"))
    lines = text.splitlines()
    assert lines[0] == "error:" and long_path in lines  # a path is never broken across lines
    assert all(len(line) <= 40 for line in lines if line != long_path) and "\n\n" not in text


# ---------------------------------------------------------------------- README
def readme_blocks() -> list[str]:
    """Every ```bash block of README.md, without the Quickstart's pip install lines."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    kept = ["\n".join(line for line in block.splitlines() if not line.startswith("pip install")) for block in blocks]
    return [block for block in kept if block.strip()]


HEAVY = re.compile(r"lightning-less (fit|validate|test|predict|pipeline|demo)\b(?!-)")


def _link_repository(workdir: Path) -> None:
    """The README's commands run from the repository root: its configs and test fixtures are there."""
    for name in ("configs", "tests"):
        (workdir / name).symlink_to(ROOT / name)


def _run_blocks(blocks: list[str], workdir: Path) -> None:
    _link_repository(workdir)
    for block in blocks:
        # Each command as written, with lightning-less run from this checkout.
        script = f'set -euo pipefail\nlightning-less() {{ "{sys.executable}" -m lightning_less.cli "$@"; }}\n{block}\n'
        done = subprocess.run(["bash", "-c", script], cwd=workdir, env=_env(HF_HUB_OFFLINE="1"),
                              capture_output=True, text=True, timeout=3000)
        assert done.returncode == 0, f"README block failed:\n{block}\n--- stderr:\n{done.stderr[-3000:]}"


def test_readme_has_runnable_blocks():
    blocks = readme_blocks()
    assert len(blocks) >= 4 and any(not HEAVY.search(b) for b in blocks)
    for block in blocks:
        # Placeholders from earlier versions: an elided command, a made-up file, a store never created.
        assert "..." not in block and not re.search(r"[\s'\[,]a\.jsonl", block) and "runs/proxy" not in block, block


def _expanded_commands(block: str, workdir: Path) -> list[list[str]]:
    """The argument lists of the block's lightning-less commands, as bash expands them (quotes, variables)."""
    script = f"set -euo pipefail\nlightning-less() {{ printf '%s\\0' \"$@\"; printf '\\n\\0'; }}\n{block}\n"
    done = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True, check=True)
    return [cmd.strip("\0").split("\0") for cmd in done.stdout.split("\n\0") if cmd.strip("\0")]


def test_readme_light_blocks_run(tmp_path, monkeypatch):
    """The blocks that train nothing, in README order, after the Usage section's first command (demo-data).

    Run in this process (the heavy test runs every block in subprocesses, as written).
    """
    monkeypatch.chdir(tmp_path)
    _link_repository(tmp_path)
    commands = [["demo-data", "--output", "demo_data"]]
    for block in readme_blocks():
        if not HEAVY.search(block):
            commands += _expanded_commands(block, tmp_path)
    assert len(commands) >= 5
    for args in commands:
        try:
            main(args)
        except SystemExit as exit_:
            pytest.fail(f"lightning-less {' '.join(args)} exited with status {exit_.code}")
    assert len(list((tmp_path / "runs").rglob("selected.jsonl"))) >= 6  # 3 select commands, 3 compared methods


@pytest.mark.slow
def test_readme_every_block_runs(tmp_path):
    """Every block in README order in one directory, as a reader would run them."""
    _run_blocks(readme_blocks(), tmp_path)
    assert (tmp_path / "runs" / "demo-pipeline" / "pipeline.json").is_file()
