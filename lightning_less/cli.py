"""The ``lightning-less`` command line.

* Trainer commands (``fit``, ``validate``, ``test``, ``predict``) go through
  :class:`LessCLI`, a ``LightningCLI`` whose model and data classes are chosen in YAML.
* Commands that need no Trainer (``demo``, ``select``, ``report``, ...) are plain
  functions whose signatures jsonargparse turns into ``--help``.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

from lightning.pytorch.cli import LightningCLI


class LessCLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path", apply_on="parse"
        )


def trainer_cli(args: list[str] | None = None) -> LessCLI:
    import lightning.pytorch as pl

    return LessCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


class _ParseOnlyCLI(LessCLI):
    def instantiate_classes(self) -> None:  # validate the config without loading any model
        pass


def parse_config(command: str, path) -> object:
    """Parse (and validate) a config file for ``command`` without running anything; used by tests."""
    extra = _extra_commands()
    if command in extra:
        from jsonargparse import ArgumentParser, ActionConfigFile

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--config", action=ActionConfigFile)
        parser.add_function_arguments(extra[command])
        return parser.parse_args(["--config", str(path)])
    if command not in ("fit", "validate", "test", "predict"):
        raise ValueError(f"unknown command {command!r}")
    import lightning.pytorch as pl

    cli = _ParseOnlyCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(path)],
        parser_kwargs={"exit_on_error": False},
    )
    return cli.config


def _extra_commands() -> dict[str, Callable]:
    from lightning_less import commands

    return commands.COMMANDS


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = _extra_commands()
    if argv and argv[0] in extra:
        from jsonargparse import auto_cli

        result = auto_cli(extra[argv[0]], args=argv[1:])
        if isinstance(result, dict):  # e.g. the pipeline's summary of output paths and metrics
            print(json.dumps(result, indent=2, default=str))
        return
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lightning-less {fit,validate,test,predict," + ",".join(extra) + "} ...\n")
        print("Trainer commands take --config <yaml> (see configs/); run '<command> --help' for each command's options.")
        if not argv:
            sys.exit(2)
        return
    trainer_cli(argv)


if __name__ == "__main__":
    main()
