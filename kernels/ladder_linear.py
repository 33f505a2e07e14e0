"""The ladder concat-projection: the first layer of u_l applied to [z~_{l+1}; v_l(z_l)] (eq. 11).

Math (a: [B, Da], b: [B, Db], weight: [N, Da + Db], bias: [N]):
    out = act([a; b] @ weight^T + bias) = act(a @ Wa^T + b @ Wb^T + bias),  Wa = weight[:, :Da], Wb = weight[:, Da:]
so the Triton path never materialises the concatenation [a; b] (the PyTorch reference does: see its docstring).

Vector-Jacobian products (dout upstream; act' read off the output, since act keeps the sign):
    dy  = dout * act'(out)         act' = 1 where out > 0, else 0 (relu) or LEAKY_SLOPE (leaky_relu)
    da  = dy @ Wa,  db = dy @ Wb   (one GEMM: d[a; b] = dy @ weight, split into its two column blocks)
    dWa = dy^T @ a, dWb = dy^T @ b (two GEMMs into the two column blocks of dweight)
    dbias = sum_i dy[i, :]

Layout: the plain-PyTorch reference (autograd derives its VJPs), then one Triton GEMM kernel with two
K-segments and a bias + activation epilogue, its launcher, and the custom ops (torch.library) that
uses it for the forward pass and the three backward GEMMs, registered as torch.library custom ops.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from ._triton import HAVE_TRITON, INTERPRET, kernel_out_dtype, tl, triton

LEAKY_SLOPE = 0.1  # LeakyReLU(0.1), as in the authors' code
ACTIVATIONS = (None, "relu", "leaky_relu")


def apply_activation(y: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return y
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, LEAKY_SLOPE)
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def ladder_linear_torch(
    a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Reference: act([a; b] @ weight^T + bias) as one F.linear on the concatenation.

    The concatenation is [B, Da + Db], small beside the weight; two matmuls on the weight's column
    slices instead would make autograd zero-fill a full-size weight gradient and copy each slice into
    it on every backward pass (bench/README.md: ~15 % of the MNIST step on a CPU).
    """
    Da, Db = a.shape[1], b.shape[1]
    if weight.shape[1] != Da + Db:
        raise ValueError(f"weight is {tuple(weight.shape)} but [a; b] has {Da} + {Db} = {Da + Db} columns")
    return apply_activation(F.linear(torch.cat([a, b], dim=1), weight, bias), activation)


# ---------------------------------------------------------------------------------------------
# Triton kernel: out = act(a @ wa + b @ wb + bias), wa: [Ka, N] and wb: [Kb, N] given by strides
# (the forward pass passes weight[:, :Da]^T and weight[:, Da:]^T as views; Kb = 0 skips b).
# ---------------------------------------------------------------------------------------------
ACT_CODES = {None: 0, "relu": 1, "leaky_relu": 2}


@triton.jit
def _ladder_linear_kernel(
    a_ptr,  # [M, Ka] first input block
    b_ptr,  # [M, Kb] second input block (unread when Kb = 0)
    wa_ptr,  # [Ka, N] weights for a, by strides
    wb_ptr,  # [Kb, N] weights for b, by strides
    bias_ptr,  # [N] (read only if HAS_BIAS)
    out_ptr,  # [M, N] out: act(a @ wa + b @ wb + bias)
    M, N, Ka, Kb,
    stride_am, stride_ak, stride_bm, stride_bk,
    stride_wak, stride_wan, stride_wbk, stride_wbn,
    stride_om, stride_on,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu
    SLOPE: tl.constexpr,  # leaky_relu's negative slope
    DOT_DTYPE: tl.constexpr,  # operands are cast to this for tl.dot (float32 in the interpreter)
    ACC_DTYPE: tl.constexpr,  # accumulator: float32, or float64 for float64 inputs
    PRECISION: tl.constexpr,  # tl.dot input_precision for float32 operands: "tf32" or "ieee"
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One program instance: the [BLOCK_M, BLOCK_N] output tile (pid_m, pid_n), over both K-segments."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
    for k0 in range(0, Ka, BLOCK_K):  # segment 1: a @ wa
        k = k0 + rk
        x = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=m_ok[:, None] & (k < Ka)[None, :], other=0.0)
        w = tl.load(wa_ptr + k[:, None] * stride_wak + rn[None, :] * stride_wan,
                    mask=(k < Ka)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    for k0 in range(0, Kb, BLOCK_K):  # segment 2: b @ wb; the concatenation [a; b] is never built
        k = k0 + rk
        x = tl.load(b_ptr + rm[:, None] * stride_bm + k[None, :] * stride_bk,
                    mask=m_ok[:, None] & (k < Kb)[None, :], other=0.0)
        w = tl.load(wb_ptr + k[:, None] * stride_wbk + rn[None, :] * stride_wbn,
                    mask=(k < Kb)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(ACC_DTYPE)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:
        acc = tl.where(acc > 0, acc, acc * SLOPE)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


if HAVE_TRITON and not INTERPRET:  # autotuning times configs on the GPU; the interpreter gets one fixed tile
    _ladder_linear_tuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(32, 64, 64, 4, 4), (64, 64, 64, 4, 4), (64, 128, 32, 4, 4),
                                     (128, 128, 32, 8, 3), (128, 64, 64, 4, 4), (32, 128, 64, 4, 3)]
        ],
        key=["N", "Ka", "Kb"],  # not M, the batch: evaluation batches reuse the training batch's tuning
    )(_ladder_linear_kernel)


# ---------------------------------------------------------------------------------------------
# Launcher and custom ops
# ---------------------------------------------------------------------------------------------
def _gemm(a: Tensor, wa: Tensor, out: Tensor, b: Tensor | None = None, wb: Tensor | None = None,
          bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """out[:] = act(a @ wa + b @ wb + bias) for any strides; a: [M, Ka], wa: [Ka, N], b: [M, Kb], wb: [Kb, N]."""
    M, Ka = a.shape
    N = wa.shape[1]
    if b is None:
        b, wb = a, wa  # unread: Kb = 0
        Kb = 0
    else:
        Kb = b.shape[1]
    if M == 0 or N == 0:
        return out
    if Ka + Kb == 0:  # no inputs: out = act(bias), or 0
        return out.copy_(apply_activation(bias.expand(M, N), activation)) if bias is not None else out.zero_()
    dtype = a.dtype
    acc_dtype = tl.float64 if dtype == torch.float64 else tl.float32
    if dtype == torch.float64:
        dot_dtype = tl.float64
    elif INTERPRET or dtype == torch.float32:  # the interpreter's bf16 tl.dot is wrong: use float32 there
        dot_dtype = tl.float32
    else:
        dot_dtype = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    # float32 operands: follow torch's own matmul setting, so the comparison with cuBLAS is fair
    precision = "tf32" if (dot_dtype == tl.float32 and a.is_cuda and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    bias = bias.contiguous() if bias is not None else None  # the epilogue reads bias[n] at n
    args = (a, b, wa, wb, bias if bias is not None else out, out, M, N, Ka, Kb,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            wa.stride(0), wa.stride(1), wb.stride(0), wb.stride(1), out.stride(0), out.stride(1))
    meta = dict(HAS_BIAS=bias is not None, ACT=ACT_CODES[activation], SLOPE=LEAKY_SLOPE,
                DOT_DTYPE=dot_dtype, ACC_DTYPE=acc_dtype, PRECISION=precision)
    if INTERPRET:  # ~2 ms per program instance: few, large tiles
        bm, bn, bk = (min(128, max(16, triton.next_power_of_2(M))), min(256, max(16, triton.next_power_of_2(N))),
                      128)
        _ladder_linear_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](*args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                                                                       BLOCK_K=bk)
    else:
        grid = lambda META: (triton.cdiv(M, META["BLOCK_M"]), triton.cdiv(N, META["BLOCK_N"]))  # noqa: E731
        _ladder_linear_tuned[grid](*args, **meta)
    return out


# The op as torch.library custom ops (forward, backward, autograd and fake/meta functions), so that
# torch.compile keeps it in its graph instead of breaking the graph around it.
@torch.library.custom_op("vlae_fast::ladder_linear_fwd", mutates_args=())
def _ladder_linear_fwd(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
    Da = a.shape[1]
    out = torch.empty(a.shape[0], weight.shape[0], dtype=kernel_out_dtype(a.dtype), device=a.device)
    # weight[:, :Da]^T and weight[:, Da:]^T are strided views: no copy of the weight either
    return _gemm(a, weight[:, :Da].t(), out, b, weight[:, Da:].t(), bias, activation).to(a.dtype)


@_ladder_linear_fwd.register_fake
def _(a, b, weight, bias, activation):
    return a.new_empty(a.shape[0], weight.shape[0])


@torch.library.custom_op("vlae_fast::ladder_linear_bwd", mutates_args=())
def _ladder_linear_bwd(dy: Tensor, a: Tensor, b: Tensor, weight: Tensor) -> list[Tensor]:
    """[d[a; b] = dy @ weight, dweight = dy^T @ [a; b]] with dy the gradient before the activation."""
    Da = a.shape[1]
    dab = torch.empty(a.shape[0], weight.shape[1], dtype=kernel_out_dtype(a.dtype), device=a.device)
    dab = _gemm(dy, weight, dab).to(a.dtype)  # d[a; b] = dy @ weight
    dweight = torch.empty_like(weight, dtype=kernel_out_dtype(weight.dtype))
    _gemm(dy.t(), a, dweight[:, :Da])  # dWa = dy^T @ a
    _gemm(dy.t(), b, dweight[:, Da:])  # dWb = dy^T @ b
    return [dab, dweight.to(weight.dtype)]


@_ladder_linear_bwd.register_fake
def _(dy, a, b, weight):
    return [a.new_empty(a.shape[0], weight.shape[1]), torch.empty_like(weight)]


def _ladder_linear_setup(ctx, inputs, output) -> None:
    a, b, weight, bias, activation = inputs
    ctx.save_for_backward(a, b, weight, output if activation is not None else None)
    ctx.activation, ctx.has_bias = activation, bias is not None


def _ladder_linear_backward(ctx, dout: Tensor):
    a, b, weight, out = ctx.saved_tensors
    if ctx.activation == "relu":  # act' read off the output
        dy = dout * (out > 0)
    elif ctx.activation == "leaky_relu":
        dy = torch.where(out > 0, dout, dout * LEAKY_SLOPE)
    else:
        dy = dout
    dab, dweight = _ladder_linear_bwd(dy, a, b, weight)
    Da = a.shape[1]
    dbias = dy.sum(0) if ctx.has_bias else None
    return dab[:, :Da], dab[:, Da:], dweight, dbias, None  # d[a; b] split into its two column blocks


_ladder_linear_fwd.register_autograd(_ladder_linear_backward, setup_context=_ladder_linear_setup)


def ladder_linear_triton(
    a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Fused ladder_linear: act([a; b] @ weight^T + bias) in one Triton GEMM, without building [a; b].

    a: [B, Da], b: [B, Db], weight: [N, Da + Db], bias: [N] or None, all one dtype and device; any
    strides (the kernel reads through them, nothing is copied). Accumulates in float32 (float64 for
    float64 inputs); float32 operands use TF32 exactly when torch.backends.cuda.matmul.allow_tf32 does.
    """
    if a.dim() != 2 or b.dim() != 2 or weight.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"ladder_linear needs a: [B, Da], b: [B, Db], weight: [N, Da + Db]; got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(weight.shape)}")
    Da, Db = a.shape[1], b.shape[1]
    if weight.shape[1] != Da + Db:
        raise ValueError(f"weight is {tuple(weight.shape)} but [a; b] has {Da} + {Db} = {Da + Db} columns")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}]; got {tuple(bias.shape)}")
    if activation not in ACT_CODES:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    tensors = [t for t in (a, b, weight, bias) if t is not None]
    if any(t.dtype != a.dtype or t.device != a.device for t in tensors):
        raise ValueError("ladder_linear needs a, b, weight and bias of one dtype on one device; got "
                         + ", ".join(f"{t.dtype} on {t.device}" for t in tensors))
    if a.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"ladder_linear needs floating-point inputs; got {a.dtype}")
    return _ladder_linear_fwd(a, b, weight, bias, activation)
