"""LESS in an ordinary Lightning project: own LightningModule, own datamodule of token ids (see README.md here)."""
