"""The Triton ladder_linear (kernels/ladder_linear.py) against the plain-PyTorch reference.

Values and all four gradients, float64 reference on upcast copies of the same inputs, random upstream
gradients, odd sizes with Da != Db, non-contiguous inputs, gradcheck, and no torch.cat on the way.
"""
import os

import pytest
import torch

from vlae_fast.kernels import ladder_linear_torch, ladder_linear_triton

# VLAE_TEST_GPU=1 on a CUDA machine: compiled kernels on GPU tensors; else the interpreter on the CPU
DEVICE = torch.device("cuda" if os.environ.get("VLAE_TEST_GPU") and torch.cuda.is_available() else "cpu")

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-4, 1e-5)}  # (atol, rtol)
# bfloat16: the error of a length-K dot product grows with K, so a fixed tolerance is either loose or
# flaky; instead the kernel must be within 2x (+ 1e-2) of the error PyTorch's own bfloat16 path makes.


def make_inputs(B, Da, Db, N, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, Da, generator=g, dtype=torch.float64) + 0.3
    b = torch.randn(B, Db, generator=g, dtype=torch.float64) - 0.2
    weight = torch.randn(N, Da + Db, generator=g, dtype=torch.float64) / (Da + Db) ** 0.5
    bias = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    return [t.to(DEVICE, dtype) for t in (a, b, weight, bias)]


def check(a, b, weight, bias, activation, dtype, seed=0):
    mine = [t.detach().requires_grad_() if t is not None else None for t in (a, b, weight, bias)]
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in (a, b, weight, bias)]
    out = ladder_linear_triton(*mine, activation)
    want = ladder_linear_torch(*ref, activation)
    assert out.dtype == dtype and out.shape == want.shape
    dout = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)
    got = [out, *torch.autograd.grad(out, [t for t in mine if t is not None], dout.to(dtype))]
    exp = [want, *torch.autograd.grad(want, [t for t in ref if t is not None], dout)]
    names = ["out"] + [f"d{n}" for n, t in zip(("a", "b", "weight", "bias"), mine) if t is not None]
    if dtype == torch.bfloat16:
        same = [t.detach().requires_grad_() if t is not None else None for t in (a, b, weight, bias)]
        base = ladder_linear_torch(*same, activation)
        baseline = [base, *torch.autograd.grad(base, [t for t in same if t is not None], dout.to(dtype))]
        for name, x, y, z in zip(names, got, exp, baseline):
            err, torch_err = (x.double() - y).abs().max().item(), (z.double() - y).abs().max().item()
            assert err <= 2 * torch_err + 1e-2, f"{name}: error {err:.4g} vs PyTorch bfloat16's {torch_err:.4g}"
        return
    atol, rtol = TOL[dtype]
    for name, x, y in zip(names, got, exp):
        torch.testing.assert_close(x.double(), y, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("B, Da, Db, N", [(1, 1, 2, 3), (3, 5, 10, 7), (257, 129, 5, 33), (37, 2, 129, 1)])
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_matches_reference(B, Da, Db, N, activation, dtype):
    check(*make_inputs(B, Da, Db, N, dtype, seed=B + Da + Db + N), activation, dtype)


def test_without_bias():
    a, b, weight, _ = make_inputs(5, 3, 4, 6, torch.float64, seed=1)
    check(a, b, weight, None, "relu", torch.float64)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(9, 37, generator=g, dtype=torch.float64).t()  # [37, 9] column-major
    b = torch.randn(37, 26, generator=g, dtype=torch.float64)[:, ::2]  # [37, 13], every other column
    weight = torch.randn(22, 11, generator=g, dtype=torch.float64).t()  # [11, 22] column-major
    bias = torch.randn(22, generator=g, dtype=torch.float64)[::2]  # [11], stride 2
    a, b, weight, bias = (t.to(DEVICE) for t in (a, b, weight, bias))  # .to keeps the strides
    assert not any(t.is_contiguous() for t in (a, b, weight, bias))
    check(a, b, weight, bias, "leaky_relu", torch.float64)


def test_gradcheck():
    a, b, weight, bias = (t.requires_grad_() for t in make_inputs(3, 2, 5, 4, torch.float64, seed=3))
    assert torch.autograd.gradcheck(lambda *t: ladder_linear_triton(*t, "leaky_relu"), (a, b, weight, bias))


def test_never_builds_the_concatenation(monkeypatch):
    a, b, weight, bias = (t.requires_grad_() for t in make_inputs(4, 3, 5, 6, torch.float32, seed=4))

    def no_cat(*args, **kwargs):
        raise AssertionError("ladder_linear_triton called torch.cat")

    monkeypatch.setattr(torch, "cat", no_cat)
    ladder_linear_triton(a, b, weight, bias, "relu").sum().backward()
    assert a.grad is not None and b.grad is not None and weight.grad is not None and bias.grad is not None


def test_bad_shapes_say_what_is_wrong():
    a, b, weight, bias = make_inputs(4, 3, 5, 6, torch.float32, seed=5)
    with pytest.raises(ValueError, match="3 \\+ 5 = 8 columns"):
        ladder_linear_triton(a, b, weight[:, :7], bias)
    with pytest.raises(ValueError, match="activation must be one of"):
        ladder_linear_triton(a, b, weight, bias, "tanh")
    with pytest.raises(ValueError, match="one dtype"):
        ladder_linear_triton(a, b.double(), weight, bias)
