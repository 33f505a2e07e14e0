"""The fused reparam + KL kernels (kernels/reparam_kl.py) against the plain-PyTorch reference.

On the CPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py).
The reference always runs in float64 on upcast copies of the same inputs; each side gets its own leaf
tensors; upstream gradients are random, not all ones.
"""
import importlib
import os

import pytest
import torch

from vlae_fast.kernels import reparam_kl as reparam_kl_dispatch
from vlae_fast.kernels import (ladder_linear_triton, reparam_kl_multi_torch, reparam_kl_multi_triton, reparam_kl_torch,
                               reparam_kl_triton)
# VLAE_TEST_GPU=1 on a CUDA machine: compiled kernels on GPU tensors; else the interpreter on the CPU
DEVICE = torch.device("cuda" if os.environ.get("VLAE_TEST_GPU") and torch.cuda.is_available() else "cpu")
op = importlib.import_module("vlae_fast.kernels.reparam_kl")  # the module: the package's `reparam_kl` is the op

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}  # dtype -> (atol, rtol)


def make_inputs(B: int, Ds: list[int], dtype: torch.dtype, seed: int):
    """mu shifted off zero, logvar in the range the model's sigma = sigmoid(.) + 1e-3 produces."""
    g = torch.Generator().manual_seed(seed)
    mus = [(torch.randn(B, D, generator=g, dtype=torch.float64) + 0.5).to(dtype) for D in Ds]
    logvars = [(torch.rand(B, D, generator=g, dtype=torch.float64) * -4.0 - 0.01).to(dtype) for D in Ds]
    eps = [torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype) for D in Ds]
    return [[t.to(DEVICE) for t in ts] for ts in (mus, logvars, eps)]


def leaves(ts, dtype=None):
    """Fresh leaf tensors (same strides where the dtype does not change)."""
    return [t.detach().to(dtype or t.dtype).requires_grad_() for t in ts]


def check_against_reference(mus, logvars, eps, dtype, seed=0):
    atol, rtol = TOL[dtype]
    m1, v1 = leaves(mus), leaves(logvars)
    m2, v2 = leaves(mus, torch.float64), leaves(logvars, torch.float64)
    zs, kl = reparam_kl_multi_triton(m1, v1, eps)
    zr, klr = reparam_kl_multi_torch(m2, v2, [e.double() for e in eps])
    assert kl.dtype == dtype and kl.shape == klr.shape and all(z.dtype == dtype for z in zs)
    for z, r in zip(zs, zr):
        torch.testing.assert_close(z.double(), r, atol=atol, rtol=rtol)
    torch.testing.assert_close(kl.double(), klr, atol=atol, rtol=rtol)
    g = torch.Generator().manual_seed(seed + 1)
    dzs = [torch.randn(z.shape, generator=g, dtype=torch.float64).to(DEVICE) for z in zs]
    dkl = torch.randn(kl.shape, generator=g, dtype=torch.float64).to(DEVICE)
    got = torch.autograd.grad([*zs, kl], [*m1, *v1], [d.to(dtype) for d in dzs] + [dkl.to(dtype)])
    want = torch.autograd.grad([*zr, klr], [*m2, *v2], dzs + [dkl])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("B, D", [(1, 1), (3, 2), (257, 5), (3, 10), (1, 129), (257, 129)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_single_level_matches_reference(B, D, dtype):
    mus, logvars, eps = make_inputs(B, [D], dtype, seed=B * 1000 + D)
    check_against_reference(mus, logvars, eps, dtype)
    z, kl = reparam_kl_triton(mus[0], logvars[0], eps[0])  # the single op's own shapes
    assert z.shape == (B, D) and kl.shape == (B,)


@pytest.mark.parametrize("B, Ds", [(100, [2, 2, 2]), (3, [1, 5, 129]), (257, [10, 2])])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_multi_level_matches_reference(B, Ds, dtype):
    check_against_reference(*make_inputs(B, Ds, dtype, seed=B + len(Ds)), dtype)


class CountLaunches:
    """Stands in for a @triton.jit kernel and counts kernel[grid](...) launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def test_multi_level_is_one_launch_each_way(monkeypatch):
    fwd, bwd = CountLaunches(op._reparam_kl_fwd_kernel), CountLaunches(op._reparam_kl_bwd_kernel)
    monkeypatch.setattr(op, "_reparam_kl_fwd_kernel", fwd)
    monkeypatch.setattr(op, "_reparam_kl_bwd_kernel", bwd)
    mus, logvars, _ = make_inputs(100, [2, 2, 2], torch.float32, seed=3)  # MNIST: 3 levels of 100 x 2
    mus, logvars = leaves(mus), leaves(logvars)
    zs, kl = reparam_kl_multi_triton(mus, logvars)
    (sum(z.sum() for z in zs) + kl.sum()).backward()
    assert (fwd.launches, bwd.launches) == (1, 1)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(7)
    mu = torch.randn(129, 37, generator=g, dtype=torch.float64).t()  # [37, 129], column-major
    logvar = (-torch.rand(37, 258, generator=g, dtype=torch.float64))[:, ::2]  # every other column
    eps = torch.randn(129, 37, generator=g, dtype=torch.float64).t()
    mu, logvar, eps = mu.to(DEVICE), logvar.to(DEVICE), eps.to(DEVICE)  # .to keeps the strides
    assert not (mu.is_contiguous() or logvar.is_contiguous() or eps.is_contiguous())
    check_against_reference([mu], [logvar], [eps], torch.float64)


def test_gradcheck():
    mus, logvars, eps = make_inputs(3, [1, 5], torch.float64, seed=11)
    mus, logvars = leaves(mus), leaves(logvars)

    def f(m0, m1, v0, v1):
        zs, kl = reparam_kl_multi_triton([m0, m1], [v0, v1], eps)
        return (*zs, kl)

    assert torch.autograd.gradcheck(f, (*mus, *logvars))


def test_in_kernel_noise_repeats_with_the_seed_and_is_standard_normal():
    mu, logvar = torch.zeros(256, 1024, device=DEVICE), torch.zeros(256, 1024, device=DEVICE)  # z = eps exactly
    torch.manual_seed(5)
    z1, kl = reparam_kl_triton(mu, logvar)
    torch.manual_seed(5)
    z2, _ = reparam_kl_triton(mu, logvar)
    z3, _ = reparam_kl_triton(mu, logvar)  # the generator moved on: fresh noise
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    assert torch.all(kl == 0)
    # 262144 draws: the mean's standard error is 0.002, the variance's 0.003
    assert abs(z1.mean().item()) < 0.01 and abs(z1.var().item() - 1.0) < 0.015, (z1.mean(), z1.var())
    assert abs(torch.corrcoef(torch.stack([z1.flatten(), z3.flatten()]))[0, 1].item()) < 0.01


def test_levels_get_different_noise():
    zs, _ = reparam_kl_multi_triton([torch.zeros(64, 64, device=DEVICE)] * 2, [torch.zeros(64, 64, device=DEVICE)] * 2)
    assert not torch.equal(zs[0], zs[1])


def test_backward_uses_the_forward_noise():
    mus, logvars, _ = make_inputs(257, [5, 129], torch.float64, seed=13)
    mus, logvars = leaves(mus), leaves(logvars)
    zs, kl = reparam_kl_multi_triton(mus, logvars)
    sum(z.sum() for z in zs).backward()  # dz = 1, dkl = 0
    for z, mu, logvar in zip(zs, mus, logvars):
        # dlogvar = 0.5 * sigma * eps = 0.5 * (z - mu): only true if backward regenerated the same eps
        torch.testing.assert_close(logvar.grad, 0.5 * (z - mu).detach(), atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(mu.grad, torch.ones_like(mu))


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="same B"):
        reparam_kl_multi_triton([torch.zeros(3, 2), torch.zeros(4, 2)], [torch.zeros(3, 2), torch.zeros(4, 2)])
    with pytest.raises(ValueError, match="eps must match"):
        reparam_kl_triton(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="float64 on cpu"):
        reparam_kl_triton(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2))


def test_reference_single_op_unchanged():
    """The reference (and the package's op on the torch path) against the formulas written out."""
    from vlae_fast.kernels import use_backend

    mus, logvars, eps = make_inputs(5, [3], torch.float64, seed=17)
    mu, logvar = mus[0], logvars[0]
    want_z = mu + (0.5 * logvar).exp() * eps[0]
    want_kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)  # KL(N(mu, sigma^2) || N(0, I)) per row
    z, kl = reparam_kl_torch(mu, logvar, eps[0])
    torch.testing.assert_close(z, want_z)
    torch.testing.assert_close(kl, want_kl)
    with use_backend("torch"):
        z, kl = reparam_kl_dispatch(mu, logvar, eps[0])
    torch.testing.assert_close(z, want_z)
    torch.testing.assert_close(kl, want_kl)


def test_fused_ops_compile_without_graph_breaks_and_draw_fresh_noise_each_call(monkeypatch):
    """Issue 16, defect 4: the seed stays on the device. fullgraph=True fails on any graph break (an
    .item() in the op was one), and a captured or compiled step must draw new noise on every call."""
    torch._dynamo.reset()
    mus = [torch.randn(5, d, device=DEVICE, requires_grad=True) for d in (3, 7)]
    logvars = [torch.randn(5, d, device=DEVICE, requires_grad=True) for d in (3, 7)]
    a, b = torch.randn(5, 6, device=DEVICE, requires_grad=True), torch.randn(5, 4, device=DEVICE)
    w = torch.randn(9, 10, device=DEVICE, requires_grad=True)

    def forward():
        zs, kl = reparam_kl_multi_triton(mus, logvars)
        y = ladder_linear_triton(a, b, w, None, "relu")
        return torch.cat([zs[0], zs[1]], 1), zs[0].sum() + zs[1].square().sum() + kl.sum() + y.sum()

    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")  # its backward is compiled too
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("the fused op read a tensor on the host"))
    z1, loss = compiled()
    loss.backward()
    z2, _ = compiled()
    assert not torch.equal(z1, z2)  # fresh noise per call
    assert torch.isfinite(mus[1].grad).all() and torch.isfinite(w.grad).all()
