"""How a gradient datastore stores its rows: float16/float32 as they are, or quantized (QLESS-style).

* ``float16`` / ``float32``: the rows themselves, ``[n, d]``.
* ``int8``: symmetric per-row quantization, codes ``q = rint(x / s)`` in ``[-127, 127]``
  (``[n, d]`` int8) with one fp32 scale ``s = max|x| / 127`` per row, so every element
  is within ``s / 2`` of ``q * s``.
* ``1bit``: the signs (``x >= 0`` is bit 1), packed with ``np.packbits`` along the row
  (``[n, ceil(d / 8)]`` uint8), with one fp32 scale ``s = mean|x|`` per row (the
  scale that makes ``s * sign(x)`` closest to ``x``). The cosine of two dequantized
  rows is the cosine of their sign vectors.

The scale of a quantized row sits in ``dim_<d>.scale.npy`` ([n] float32) beside its codes.
A zero row (an example without features) has scale 0 and dequantizes to zeros, so
scoring refuses it as it does a zero float row. Cosine similarity is invariant to a
row's scale, so LESS scores from a quantized store are the cosines of the dequantized
rows (docs/scaling.md, "Quantized stores").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FLOAT_DTYPES = ("float16", "float32")
QUANTIZED_DTYPES = ("int8", "1bit")
STORE_DTYPES = FLOAT_DTYPES + QUANTIZED_DTYPES
SCALE_SUFFIX = ".scale.npy"


def is_quantized(dtype: str) -> bool:
    """Whether a store of ``dtype`` holds codes plus a per-row scale."""
    return dtype in QUANTIZED_DTYPES


def dtype_family(dtype: str) -> str:
    """What must agree for two stores to be scored or merged together: ``float`` (fp16/fp32), ``int8`` or ``1bit``."""
    return "float" if dtype in FLOAT_DTYPES else dtype


def code_layout(dtype: str, dim: int) -> tuple[int, np.dtype]:
    """Columns and numpy dtype of the array that holds ``dim``-wide rows stored as ``dtype``."""
    if dtype == "1bit":
        return (dim + 7) // 8, np.dtype(np.uint8)
    if dtype == "int8":
        return dim, np.dtype(np.int8)
    return dim, np.dtype(dtype)


def array_specs(snapshot_dir: Path, dim: int, n: int, dtype: str) -> list[tuple[Path, tuple[int, ...], np.dtype]]:
    """``(file, shape, dtype)`` of the rows (or codes) of one ``dim`` of a snapshot, then of their scales if quantized."""
    cols, code_dtype = code_layout(dtype, dim)
    specs = [(snapshot_dir / f"dim_{dim}.npy", (n, cols), code_dtype)]
    if is_quantized(dtype):
        specs.append((snapshot_dir / f"dim_{dim}{SCALE_SUFFIX}", (n,), np.dtype(np.float32)))
    return specs


def encode(feats: np.ndarray, dtype: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(codes, scales)`` of finite float32 rows ``feats`` [b, d] stored as ``dtype`` (``scales`` None for floats).

    Args:
        feats: the rows, float32, finite.
        dtype: a store dtype (:data:`STORE_DTYPES`).
        rows: their dataset indices, named in errors.

    Raises:
        ValueError: values a float dtype cannot hold (fp16 overflow to inf, or a nonzero
            row flushed to zeros).
    """
    if dtype == "int8":
        top = np.abs(feats).max(axis=1)
        scales = (top / np.float32(127)).astype(np.float32)
        safe = np.where(scales > 0, scales, np.float32(1)).astype(np.float64)
        codes = np.clip(np.rint(feats / safe[:, None]), -127, 127).astype(np.int8)
        return codes, scales
    if dtype == "1bit":
        scales = np.abs(feats).mean(axis=1, dtype=np.float64).astype(np.float32)
        return np.packbits(feats >= 0, axis=1), scales
    with np.errstate(over="ignore"):  # overflow is detected just below, with a clearer message
        stored = feats.astype(dtype)
    if not np.isfinite(stored).all():
        raise ValueError(f"features up to {np.abs(feats).max():.3g} overflow {dtype} (max "
                         f"{np.finfo(dtype).max:.3g}); create the store with dtype='float32'")
    lost = (stored == 0).all(axis=1) & (feats != 0).any(axis=1)
    if lost.any():
        raise ValueError(f"nonzero features underflow to zero in {dtype} for indices {rows[lost][:10].tolist()}; "
                         "create the store with dtype='float32'")
    return stored, None


def decode_into(out: np.ndarray, codes: np.ndarray, scales: np.ndarray, dtype: str) -> np.ndarray:
    """Dequantize ``codes`` [b, c] with ``scales`` [b] into the float32 buffer ``out`` [b, d]; returns ``out``."""
    if dtype == "1bit":
        bits = np.unpackbits(codes, axis=1, count=out.shape[1])
        np.multiply(bits, np.float32(2), out=out, casting="unsafe")
        out -= np.float32(1)
    else:
        np.copyto(out, codes, casting="unsafe")
    out *= np.asarray(scales, dtype=np.float32)[:, None]
    return out


def decode(codes: np.ndarray, scales: np.ndarray, dtype: str, dim: int) -> np.ndarray:
    """The float32 rows [b, dim] that ``codes`` and ``scales`` stand for."""
    return decode_into(np.empty((codes.shape[0], dim), dtype=np.float32), np.asarray(codes), scales, dtype)


class QuantizedRows:
    """A quantized ``[n, dim]`` feature array of a store: codes and scales, read (and dequantized) by rows.

    Indexing with a row slice or index array gives dequantized float32 rows;
    ``np.asarray`` dequantizes every row (fine for a target store, not for a large pool:
    :func:`lightning_less.selection.scoring.influence_scores` reads ``codes`` block by block).

    Attributes:
        codes: ``[n, c]`` int8 codes or packed uint8 signs (usually a read-only memmap).
        scales: ``[n]`` float32 per-row scales.
        dtype: ``int8`` or ``1bit``.
        shape: ``(n, dim)``, the dequantized shape.
    """

    def __init__(self, codes: np.ndarray, scales: np.ndarray, dtype: str, dim: int) -> None:
        if not is_quantized(dtype):
            raise ValueError(f"not a quantized dtype: {dtype!r}")
        if codes.shape != (scales.shape[0], code_layout(dtype, dim)[0]):
            raise ValueError(f"codes of shape {codes.shape} and {scales.shape[0]} scales do not hold {dim}-wide {dtype} rows")
        self.codes, self.scales, self.dtype = codes, scales, dtype
        self.shape = (int(codes.shape[0]), int(dim))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        codes, scales = np.asarray(self.codes[rows]), np.asarray(self.scales[rows])
        if codes.ndim == 1:
            return decode(codes[None], scales.reshape(1), self.dtype, self.shape[1])[0]
        return decode(codes, scales, self.dtype, self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)
