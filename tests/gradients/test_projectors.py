"""Projectors: exact TRAK construction, sparse JL determinism, JL property, no fallback."""

from __future__ import annotations

import itertools

import pytest
import torch
from trak.projectors import BasicProjector, ProjectionType

from lightning_less.gradients.projectors import SparseJLProjector, make_projector

GRAD_DIM = 3000


@pytest.fixture
def grads() -> torch.Tensor:
    return torch.randn(5, GRAD_DIM, generator=torch.Generator().manual_seed(0))


def test_trak_basic_equals_direct_trak_call(grads):
    proj = make_projector("trak_basic", GRAD_DIM, 300)
    direct = BasicProjector(grad_dim=GRAD_DIM, proj_dim=300, seed=0, proj_type=ProjectionType.rademacher,
                            device="cpu", block_size=128, dtype=torch.float32)
    expected = direct.project(grads.clone(), model_id=0)
    out = proj.project(grads)
    assert out.dtype == torch.float32 and out.shape == (5, 300)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # another seed is another matrix
    assert not torch.allclose(make_projector("trak_basic", GRAD_DIM, 300, seed=1).project(grads), expected)
    desc = proj.describe()
    assert desc == {"kind": "trak_basic", "seed": 0, "grad_dim": GRAD_DIM, "proj_dim": 300, "dtype": "float32",
                    "proj_type": "rademacher", "model_id": 0, "block_size": 128, "device_type": "cpu"}


def test_trak_basic_refuses_chunks(grads):
    proj = make_projector("trak_basic", GRAD_DIM, 64)
    assert not proj.supports_chunks
    with pytest.raises(ValueError, match="whole gradient"):
        proj.project(grads[:, :100], offset=0)


def test_trak_cuda_without_cuda_raises():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA"):
        make_projector("trak_cuda", GRAD_DIM, 64)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown projector kind"):
        make_projector("dense", GRAD_DIM, 64)


def test_sparse_jl_deterministic_and_seeded(grads):
    a = make_projector("sparse_jl", GRAD_DIM, 256, seed=7).project(grads)
    b = make_projector("sparse_jl", GRAD_DIM, 256, seed=7).project(grads)
    c = make_projector("sparse_jl", GRAD_DIM, 256, seed=8).project(grads)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1 * a.abs().max()
    assert make_projector("sparse_jl", GRAD_DIM, 256, seed=7).describe() == \
        make_projector("sparse_jl", GRAD_DIM, 256, seed=7).describe()
    assert make_projector("sparse_jl", GRAD_DIM, 256, seed=7).describe()["fingerprint"] != \
        make_projector("sparse_jl", GRAD_DIM, 256, seed=8).describe()["fingerprint"]


def test_sparse_jl_matrix_structure():
    d, s = 64, 4
    proj = make_projector("sparse_jl", 50, d, sparsity=s)
    matrix = proj.project(torch.eye(50))  # row j = R[j, :]
    assert ((matrix != 0).sum(dim=1) == s).all()
    assert torch.allclose(matrix.abs()[matrix != 0], torch.tensor(s**-0.5))
    for k in range(s):  # exactly one entry per output block
        assert ((matrix[:, k * d // s : (k + 1) * d // s] != 0).sum(dim=1) == 1).all()
    # the matrix of a coordinate does not depend on grad_dim
    bigger = make_projector("sparse_jl", 5000, d, sparsity=s).project(torch.eye(50, 5000))
    torch.testing.assert_close(bigger, matrix, rtol=0, atol=0)


def test_sparse_jl_chunks_sum_to_whole(grads):
    proj = make_projector("sparse_jl", GRAD_DIM, 128)
    whole = proj.project(grads)
    cuts = [0, 1, 700, 701, 2048, GRAD_DIM]
    parts = sum(proj.project(grads[:, a:b], offset=a) for a, b in zip(cuts[:-1], cuts[1:]))
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        proj.project(grads[:, :10], offset=GRAD_DIM - 5)


def test_sparse_jl_chunks_across_generator_groups(monkeypatch):
    monkeypatch.setattr(SparseJLProjector, "GROUP", 256)  # several groups in a small test
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    proj = make_projector("sparse_jl", 1000, 32)
    whole = proj.project(x)
    parts = proj.project(x[:, :300], offset=0) + proj.project(x[:, 300:], offset=300)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    dense = proj.project(torch.eye(1000))
    torch.testing.assert_close(x @ dense, whole, rtol=1e-4, atol=1e-4)


def test_sparse_jl_preserves_norms_and_inner_products():
    # JL: with d = 1024 the relative error of a squared norm has std about sqrt(2/d) = 0.044,
    # so a 0.25 bound is more than 5 sigma for each of the 20 vectors.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 20000, generator=gen)
    x[:10] *= torch.rand(10, 20000, generator=gen) ** 4  # heavy-tailed, uneven coordinates
    y = make_projector("sparse_jl", 20000, 1024, seed=3).project(x)
    ratio = y.norm(dim=1) ** 2 / x.norm(dim=1) ** 2
    assert (ratio - 1).abs().max() < 0.25, ratio
    # inner products of unit vectors: error std about sqrt(1/d) = 0.031
    xn, yn = x / x.norm(dim=1, keepdim=True), y / x.norm(dim=1, keepdim=True)
    err = (yn @ yn.T - xn @ xn.T).abs().max()
    assert err < 0.2, err
    # correlated pair: cosine 0.6 is kept
    a = torch.randn(20000, generator=gen)
    b = 0.6 * a + 0.8 * torch.randn(20000, generator=gen)
    pa, pb = make_projector("sparse_jl", 20000, 1024, seed=3).project(torch.stack([a, b]))
    assert torch.nn.functional.cosine_similarity(pa, pb, dim=0).item() == pytest.approx(
        torch.nn.functional.cosine_similarity(a, b, dim=0).item(), abs=0.12)


def test_sparse_jl_validates_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        make_projector("sparse_jl", 100, 8, sparsity=9)
    with pytest.raises(ValueError, match="positive"):
        make_projector("sparse_jl", 0, 8)


def test_trak_basic_cached_matrix_is_bit_identical_to_trak():
    from trak.projectors import BasicProjector, ProjectionType

    g = torch.randn(5, 3000, generator=torch.Generator().manual_seed(1))
    cached = make_projector("trak_basic", 3000, 300)
    uncached = make_projector("trak_basic", 3000, 300, max_cache_bytes=0)
    assert cached.cached and not uncached.cached
    direct = BasicProjector(grad_dim=3000, proj_dim=300, seed=0, proj_type=ProjectionType.rademacher, device="cpu",
                            block_size=128, dtype=torch.float32).project(g, model_id=0)
    assert torch.equal(cached.project(g), direct)
    assert torch.equal(cached.project(g), direct)  # the cache is reused, not regenerated differently
    assert torch.equal(uncached.project(g), direct)
    assert cached.describe() == uncached.describe()  # same matrix: same store compatibility


def test_sparse_jl_equals_the_matrix_drawn_coordinate_by_coordinate(monkeypatch):
    """The sparse product uses exactly the drawn rows and signs, across groups, chunkings and cache hits."""
    monkeypatch.setattr(SparseJLProjector, "GROUP", 256)  # several generator groups in a small test
    grad_dim, d, s = 1000, 48, 3
    proj = SparseJLProjector(grad_dim, d, seed=5, sparsity=s)
    dense = torch.zeros(grad_dim, d)  # brute force: R[j, rows[k, j]] = signs[k, j] / sqrt(s)
    for j in range(grad_dim):
        g, col = divmod(j, SparseJLProjector.GROUP)
        rows, signs = proj._draw(g)
        for k in range(s):
            dense[j, int(rows[k, col])] = float(signs[k, col]) / s**0.5
    x = torch.randn(4, grad_dim, generator=torch.Generator().manual_seed(3))
    want = x @ dense
    for cuts in ([0, grad_dim], [0, 300, 1000], [0, 255, 256, 700, 1000], [0, 300, 1000]):  # the last: cached
        got = sum(proj.project(x[:, a:b], offset=a) for a, b in itertools.pairwise(cuts))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Callers that chunk differently every time do not grow the cache past twice the gradient.
    assert proj._cached_columns <= 2 * grad_dim
