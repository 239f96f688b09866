"""The ``lightning-less`` command line: each command is one function, imported only when it runs.

* Trainer commands (``fit``, ``validate``, ``test``, ``predict``) go through a
  ``LightningCLI`` whose model and data classes are chosen in YAML (see ``configs/``).
* Every other command is a function with keyword arguments (``module:function`` in
  :data:`COMMANDS`); jsonargparse turns its signature and docstring into the command's
  options and ``--help``, and the CLI prints what it returns, once: an object with
  ``__rich__`` through rich, a dict as indented JSON, nothing for None.
* An expected failure (:class:`~lightning_less.errors.LessError`, a missing file) prints
  one ``error: ...`` paragraph on stderr and exits with status 2, also when a class raised it
  while jsonargparse built it from the command line or a config (:func:`expected_error`);
  ``--debug`` anywhere on the command line (or ``LIGHTNING_LESS_DEBUG=1``) shows the
  traceback instead, after the error's ``details`` if it has any.

Nothing heavy is imported at module level: ``--help`` and ``--version`` answer without
importing torch or Lightning.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import textwrap
from contextlib import contextmanager, redirect_stdout
from typing import Any, Callable, Iterator

from lightning_less.errors import LessError
from lightning_less.version import __version__

PROG = "lightning-less"
TRAINER = "lightning_less.cli:trainer_cli"

#: name -> ("module:function", one-line description), in the order ``--help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("lightning_less.recipes.pipeline:run_pipeline",
                 "The whole LESS pipeline: warmup, features, selection, training."),
    "select": ("lightning_less.recipes.select:select",
               "Select a budget of a pool with one method (LESS, S2L, baselines)."),
    "compare": ("lightning_less.recipes.compare:compare",
                "Compare selection methods on the same pool, targets and budget."),
    "report": ("lightning_less.analysis.report:report",
               "Write an offline HTML report (plots, top examples) of a selection."),
    "inspect": ("lightning_less.analysis.inspect:inspect",
                "Show a selection's top pool examples for one target subtask."),
    "targets": ("lightning_less.recipes.targets:targets",
                "Build a benchmark's few-shot target set (MMLU, TydiQA, BBH) as jsonl."),
    "evaluate": ("lightning_less.recipes.evaluate:evaluate",
                 "Evaluate a model (+ PEFT adapter) with lm-evaluation-harness."),
    "demo": ("lightning_less.recipes.demo:demo",
             "Run the built-in demo: LESS and the baselines on CPU (~2 min)."),
    "demo-data": ("lightning_less.data.demo:demo_data",
                  "Write the demo's pool (3 files, 3 formats), targets and eval set."),
    "tiny-model": ("lightning_less.models.tiny:tiny_model",
                   "Save the offline tiny Llama-style model and its tokenizer."),
    "fit": (TRAINER, "Train: LoRA warmup with LESS snapshots, training on a selection."),
    "validate": (TRAINER, "Evaluate on validation data: target loss and exact match."),
    "test": (TRAINER, "Evaluate on test data: target loss and exact match."),
    "predict": (TRAINER, "Run a pass over data: gradient features, loss trajectories."),
}

#: Failures a user causes and can fix: printed as one paragraph, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    LessError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)


# ---------------------------------------------------------------------- help
def _width() -> int:
    return max(40, min(shutil.get_terminal_size().columns, 120))


def help_text() -> str:
    """The top-level ``--help``: usage, every command with its description, the global options."""
    width = _width()
    pad = max(len(name) for name in COMMANDS) + 4

    def entries(rows: list[tuple[str, str]]) -> str:
        return "\n".join(textwrap.fill(text, width, initial_indent=f"  {name:<{pad - 2}}",
                                       subsequent_indent=" " * pad) for name, text in rows)

    plain = [(name, text) for name, (target, text) in COMMANDS.items() if target != TRAINER]
    trainer = [(name, text) for name, (target, text) in COMMANDS.items() if target == TRAINER]
    options = [("-h, --help", "Show this help and exit."), ("--version", "Show the version and exit."),
               ("--debug", "Show the traceback of an error (or set LIGHTNING_LESS_DEBUG=1).")]
    return "\n".join([
        f"usage: {PROG} [-h] [--version] [--debug] <command> [options]",
        "",
        textwrap.fill("Targeted data selection for instruction tuning (LESS, S2L and baselines) on PyTorch Lightning.", width),
        "",
        "commands:",
        entries(plain),
        "",
        "trainer commands (LightningCLI, --config <yaml>):",
        entries(trainer),
        "",
        "options:",
        entries(options),
        "",
        textwrap.fill(f"'{PROG} <command> --help' shows a command's options; every command also reads them from "
                      "a YAML file with --config (examples in configs/).", width),
    ])


# ---------------------------------------------------------------------- commands
def load_command(name: str) -> Callable[..., Any]:
    """Import the function behind command ``name`` (``module:function`` in :data:`COMMANDS`)."""
    module, _, attr = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)


def _description(fn: Callable) -> str:
    """The docstring up to its ``Args:`` section: the command's ``--help`` description."""
    doc = inspect.getdoc(fn) or ""
    return re.split(r"^(?:Args|Arguments|Returns|Raises|Yields|Examples?):\s*$", doc, maxsplit=1, flags=re.M)[0].strip()


def command_parser(name: str, exit_on_error: bool = True):
    """The jsonargparse parser of a function command: ``--config`` plus one option per parameter."""
    import jsonargparse

    # Settings dataclasses document their fields with attribute docstrings: show them in --help.
    if hasattr(jsonargparse, "set_parsing_settings"):
        jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    else:  # pragma: no cover - jsonargparse < 4.36
        jsonargparse.set_docstring_parse_options(attribute_docstrings=True)
    fn = load_command(name)
    parser = jsonargparse.ArgumentParser(prog=f"{PROG} {name}", description=_description(fn), exit_on_error=exit_on_error)
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile,
                        help="A YAML file with any of the options below (examples in configs/).")
    parser.add_function_arguments(fn, as_group=False, fail_untyped=True, sub_configs=True)
    # The usage line names the command and its required options; the long list is in --help.
    required = [f"{a.option_strings[0]} {a.dest.upper()}" for a in parser._actions if a.required and a.option_strings]
    indent = " " * len(f"usage: {PROG} {name} ")
    parser.usage = textwrap.fill(" ".join([f"{PROG} {name} [-h] [--config CONFIG]", *required, "[options]"]),
                                 _width(), initial_indent="usage: ", subsequent_indent=indent)[len("usage: "):]
    return parser


def _call(name: str, parser, cfg) -> Any:
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    kwargs = dict(instantiate(cfg))
    kwargs.pop("config", None)
    return load_command(name)(**kwargs)


@functools.cache
def less_cli_classes() -> tuple[type, type]:
    """``(LessCLI, ParseOnlyCLI)``: built on first use, so that importing this module imports no Lightning."""
    from lightning.pytorch.cli import LightningCLI
    from typing_extensions import override

    class LessCLI(LightningCLI):
        """LightningCLI with the data's tokenizer linked to the model."""

        @override
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments(
                "model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path", apply_on="parse"
            )

    class ParseOnlyCLI(LessCLI):
        """Parses and validates a config without building the model or the data."""

        @override
        def instantiate_classes(self) -> None:
            pass

    for cls in (LessCLI, ParseOnlyCLI):  # importable by these names through the module's __getattr__
        cls.__qualname__ = cls.__name__
    return LessCLI, ParseOnlyCLI


def __getattr__(name: str) -> Any:
    # ``from lightning_less.cli import LessCLI`` keeps working without importing Lightning for --help.
    if name in ("LessCLI", "ParseOnlyCLI"):
        return less_cli_classes()[name == "ParseOnlyCLI"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def _command_line(args: list[str]) -> Iterator[None]:
    """Run with ``sys.argv = [program, *args]``.

    LightningCLI reads ``sys.argv`` itself (and warns when given ``args=`` as well), and DDP
    launches every other rank with ``sys.argv``: the command line it sees must be the one
    that runs, without the ``--debug`` this CLI consumed.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else PROG, *args]
    try:
        yield
    finally:
        sys.argv = saved


def trainer_cli(args: list[str]) -> None:
    """Run a trainer command (``fit``, ``validate``, ``test``, ``predict`` and its options) through LightningCLI."""
    import lightning.pytorch as pl

    less_cli, _ = less_cli_classes()
    with _command_line(args):
        less_cli(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": PROG})


def parse_config(command: str, *paths: str | os.PathLike) -> object:
    """Parse and validate config files for ``command`` (later ones override) without running anything.

    Raises on any error.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    args = [arg for path in paths for arg in ("--config", str(path))]
    if COMMANDS[command][0] != TRAINER:
        return command_parser(command, exit_on_error=False).parse_args(args)
    import lightning.pytorch as pl

    _, parse_only = less_cli_classes()
    with _command_line(args):
        cli = parse_only(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         run=False, parser_kwargs={"exit_on_error": False, "prog": PROG})
    return cli.config


def run_command(name: str, args: list[str]) -> Any:
    """Parse ``args`` for command ``name``, run it and return its result (None for trainer commands).

    A trainer command prints what LightningCLI prints (e.g. ``test``'s metrics table) on stdout.
    """
    if COMMANDS[name][0] == TRAINER:
        return trainer_cli([name, *args])
    parser = command_parser(name)
    cfg = parser.parse_args(args)  # --help and --print_config answer on stdout
    # stdout carries the result alone: whatever the command prints while it runs (Lightning's
    # rich progress bars, a library's stray print) is progress, for stderr.
    with redirect_stdout(sys.stderr):
        return _call(name, parser, cfg)


# ---------------------------------------------------------------------- output
def print_result(result: Any) -> None:
    """Print a command's result on stdout once: rich for ``__rich__`` objects, JSON for dicts and lists.

    Under DDP (a command whose Trainer runs on several devices, started again by Lightning on
    every rank) only global rank 0 prints it.
    """
    from lightning_less.distributed import global_rank

    if result is None or global_rank() != 0:
        return
    if hasattr(result, "__rich__") or hasattr(result, "__rich_console__"):
        from rich.console import Console

        Console().print(result)  # fits the terminal's width
    elif isinstance(result, (dict, list, tuple)):
        print(json.dumps(result, indent=2, default=str))
    else:
        print(result)


def error_message(err: BaseException) -> str:
    """One ``error: ...`` paragraph for an expected failure, wrapped to the terminal (paths kept whole)."""
    if isinstance(err, OSError) and not isinstance(err, LessError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"  # "[Errno 2] ... 'x'" says less, in a worse order
    else:
        text = str(err) or type(err).__name__
    return textwrap.fill("error: " + " ".join(text.split()), _width(), break_long_words=False, break_on_hyphens=False)


def expected_error(err: BaseException) -> BaseException | None:
    """The failure a user can fix behind ``err``: ``err`` itself, or the one a class raised while jsonargparse built it.

    jsonargparse wraps what a class's ``__init__`` raises (LightningCLI's model and data, any
    ``class_path`` in a config) in a ``ValueError`` that lists every type of a Union it tried,
    the given value and more: a hundred lines with the real message buried inside. The error
    it was raised from, however deeply nested, is the one to print. An error raised outside
    jsonargparse is never unwrapped (None unless it is expected itself): a bug keeps its traceback.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, EXPECTED_ERRORS):
            return err
        if not _raised_by_jsonargparse(err):
            return None
        err = err.__cause__ or err.__context__
    return None


def _raised_by_jsonargparse(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0] == "jsonargparse"


def _debug_requested(args: list[str]) -> bool:
    return "--debug" in args or os.environ.get("LIGHTNING_LESS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> None:
    """The ``lightning-less`` entry point.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).

    Exits with status 2 on a usage error or an expected failure (one paragraph on stderr).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(help_text(), file=sys.stdout if args else sys.stderr)
        if not args:
            raise SystemExit(2)
        return
    if args[0] == "--version":
        print(f"{PROG} {__version__}")
        return
    name = args[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; choose one of: {', '.join(COMMANDS)}"
        print(f"usage: {PROG} [-h] [--version] [--debug] <command> [options]\nerror: unknown command '{name}'{hint}",
              file=sys.stderr)
        raise SystemExit(2)
    from lightning_less.console import setup_logging

    setup_logging()
    try:
        result = run_command(name, args[1:])
    except Exception as err:
        expected = expected_error(err)
        if expected is None:
            raise
        if debug:
            details = getattr(expected, "details", None)
            if details:  # what the one paragraph leaves out (e.g. every differing file), then the traceback
                print(f"details of the error below:\n{details}", file=sys.stderr)
            raise
        print(error_message(expected), file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    print_result(result)


if __name__ == "__main__":
    main()
