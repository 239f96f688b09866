"""Commands of the ``lightning-less`` CLI that need no Trainer of their own."""

from __future__ import annotations

from lightning_less.modules.tiny import save_tiny_model


def tiny_model(output: str, size: str = "tiny", seed: int = 0) -> None:
    """Build the offline tiny Llama-style model and tokenizer and save them to a directory.

    Args:
        output: directory to ``save_pretrained`` into.
        size: ``tiny`` or ``small``.
        seed: initialisation seed.
    """
    path = save_tiny_model(output, size=size, seed=seed)
    print(f"saved tiny model and tokenizer to {path}")


def demo_data(output: str = "demo_data", seed: int = 0, pool_size: int = 2400) -> None:
    """Write the built-in demo's pool (3 jsonl files in 3 formats), targets and evaluation set.

    Args:
        output: directory to write into.
        seed: the data's seed.
        pool_size: number of pool examples.
    """
    from lightning_less.data.demo import generate_demo_data

    paths = generate_demo_data(output, seed=seed, pool_size=pool_size)
    for key, value in paths.items():
        print(f"{key}: {value}")


COMMANDS = {"tiny-model": tiny_model, "demo-data": demo_data}
