"""Reparameterization + Gaussian KL to the N(0, I) prior, per row.

Math (mu, logvar, eps: [B, D]):
    sigma = exp(0.5 * logvar)
    z     = mu + sigma * eps                                   # reparameterization trick
    kl[i] = 0.5 * sum_j (mu^2 + exp(logvar) - 1 - logvar)      # KL(N(mu, sigma^2) || N(0, 1))

Vector-Jacobian products (dz, dkl upstream; dkl is [B], broadcast along j):
    dmu     = dz + dkl * mu
    dlogvar = dz * 0.5 * sigma * eps + dkl * 0.5 * (exp(logvar) - 1)

Layout (as Liger-Kernel's op files): the plain-PyTorch references (autograd derives their VJPs),
then the Triton kernels, their launchers, and one custom op (torch.library, with its autograd) that serves both public
ops: reparam_kl is reparam_kl_multi with one level.

The fused path, for L levels of widths D_1..D_L over one batch of B rows, in ONE launch each way:
    forward : reads mu_l, logvar_l (and eps_l if given), writes z_l and kl[:, l]
    backward: reads mu_l, logvar_l, dz_l, dkl (and eps_l), writes dmu_l, dlogvar_l
With eps=None the noise is Philox noise drawn inside the kernel from a seed tensor drawn on the
inputs' device from torch's generator (so torch.manual_seed repeats it; the seed is never read on
the host) and regenerated in the backward pass from that seed: no noise tensor is ever stored. eps_l[i, j] = randn(seed, offset_l + i * D_l + j), with
offset_l = B * (D_1 + ... + D_{l-1}), so every element of every level gets its own stream position.
No gradient flows to an explicit eps (it is noise).
"""
import torch
from torch import Tensor

from ._triton import kernel_out_dtype, tl, triton


def reparam_kl_torch(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: z = mu + exp(0.5 logvar) * eps and the per-row KL to N(0, I).

    mu, logvar: [B, D]; eps: [B, D] or None (drawn from torch's generator). Returns z [B, D], kl [B].
    """
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both be [B, D]; got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if eps is None:
        eps = torch.randn_like(mu)
    elif eps.shape != mu.shape:
        raise ValueError(f"eps must match mu's shape {tuple(mu.shape)}; got {tuple(eps.shape)}")
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)
    return z, kl


def reparam_kl_multi_torch(
    mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor] | None = None
) -> tuple[list[Tensor], Tensor]:
    """Reference for all ladder levels at once: one (z_l, kl_l) per level.

    mus[l], logvars[l]: [B, D_l] (widths may differ); eps: a matching list or None.
    Returns the list of z_l [B, D_l] and kl [B, L] (column l = level l's KL).
    """
    if len(mus) != len(logvars) or (eps is not None and len(eps) != len(mus)):
        raise ValueError("mus, logvars (and eps) must have one entry per level")
    zs, kls = [], []
    for l, (mu, logvar) in enumerate(zip(mus, logvars)):
        z, kl = reparam_kl_torch(mu, logvar, None if eps is None else eps[l])
        zs.append(z)
        kls.append(kl)
    return zs, torch.stack(kls, dim=1)


# ---------------------------------------------------------------------------------------------
# Triton kernels. Pointer tuples hold one entry per level; every tensor is contiguous [B, D_l].
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(mu_ptr, logvar_ptr, eps_ptr, rows, row_ok, cols, D, noise_offset, seed,
               HAS_EPS: tl.constexpr, COMPUTE: tl.constexpr):
    """One [BLOCK_B, BLOCK_D] tile of level l: its mask, element offsets, mu, logvar and eps.

    Forward and backward both read their tiles here, so the backward regenerates exactly the
    forward's Philox noise (same seed, same positions noise_offset + offs).
    """
    mask = row_ok[:, None] & (cols < D)[None, :]
    offs = rows[:, None] * D + cols[None, :]  # element index in level l
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    logvar = tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_EPS:
        eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    else:
        eps = tl.randn(seed, noise_offset + offs).to(COMPUTE)
    return mask, offs, mu, logvar, eps


@triton.jit
def _reparam_kl_fwd_kernel(
    mu_ptrs,  # L x [B, D_l] posterior means
    logvar_ptrs,  # L x [B, D_l] log variances, logvar = log sigma^2
    eps_ptrs,  # L x [B, D_l] explicit noise (read only if HAS_EPS)
    z_ptrs,  # L x [B, D_l] out: z = mu + sigma * eps
    kl_ptr,  # [B, L] out: kl[i, l] = 0.5 * sum_j (mu^2 + sigma^2 - 1 - logvar)
    Ds,  # L ints: the widths D_l
    noise_offsets,  # L ints: offset_l, the first Philox position of level l
    B,  # rows
    seed_ptr,  # [1] int64 Philox seed, read on the device (in-kernel noise only)
    L: tl.constexpr,  # levels
    BLOCK_B: tl.constexpr,  # rows per program
    BLOCK_DS: tl.constexpr,  # L powers of two: columns per step for each level
    HAS_EPS: tl.constexpr,  # eps given (else drawn in the kernel)
    COMPUTE: tl.constexpr,  # float32, or float64 for float64 inputs
):
    """One program instance: rows [pid * BLOCK_B, (pid + 1) * BLOCK_B) of every level."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    seed = tl.load(seed_ptr) if not HAS_EPS else 0
    for l in tl.static_range(L):
        D = Ds[l]
        BLOCK_D: tl.constexpr = BLOCK_DS[l]
        kl = tl.zeros([BLOCK_B], dtype=COMPUTE)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask, offs, mu, logvar, eps = _load_tile(mu_ptrs[l], logvar_ptrs[l], eps_ptrs[l], rows, row_ok, cols, D,
                                                     noise_offsets[l], seed, HAS_EPS, COMPUTE)
            sigma = tl.exp(0.5 * logvar)
            z = mu + sigma * eps
            tl.store(z_ptrs[l] + offs, z.to(z_ptrs[l].dtype.element_ty), mask=mask)
            kl_terms = mu * mu + sigma * sigma - 1.0 - logvar  # zero where masked: 0 + 1 - 1 - 0
            kl += tl.sum(tl.where(mask, kl_terms, 0.0), axis=1)
        tl.store(kl_ptr + rows * L + l, (0.5 * kl).to(kl_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _reparam_kl_bwd_kernel(
    mu_ptrs,  # L x [B, D_l]
    logvar_ptrs,  # L x [B, D_l]
    eps_ptrs,  # L x [B, D_l] explicit noise (read only if HAS_EPS)
    dz_ptrs,  # L x [B, D_l] upstream gradient of z_l
    dkl_ptr,  # [B, L] upstream gradient of kl
    dmu_ptrs,  # L x [B, D_l] out: dmu = dz + dkl * mu
    dlogvar_ptrs,  # L x [B, D_l] out: dlogvar = dz * 0.5 * sigma * eps + dkl * 0.5 * (sigma^2 - 1)
    Ds,  # L ints
    noise_offsets,  # L ints, as in the forward pass
    B,
    seed_ptr,  # [1] the forward pass's seed: the same noise is regenerated
    L: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_DS: tl.constexpr,
    HAS_EPS: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """One program instance: the gradients of rows [pid * BLOCK_B, (pid + 1) * BLOCK_B) of every level."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    seed = tl.load(seed_ptr) if not HAS_EPS else 0
    for l in tl.static_range(L):
        D = Ds[l]
        BLOCK_D: tl.constexpr = BLOCK_DS[l]
        dkl = tl.load(dkl_ptr + rows * L + l, mask=row_ok, other=0.0).to(COMPUTE)[:, None]  # [BLOCK_B, 1]
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask, offs, mu, logvar, eps = _load_tile(mu_ptrs[l], logvar_ptrs[l], eps_ptrs[l], rows, row_ok, cols, D,
                                                     noise_offsets[l], seed, HAS_EPS, COMPUTE)
            dz = tl.load(dz_ptrs[l] + offs, mask=mask, other=0.0).to(COMPUTE)
            sigma = tl.exp(0.5 * logvar)
            dmu = dz + dkl * mu
            dlogvar = 0.5 * (dz * sigma * eps + dkl * (sigma * sigma - 1.0))
            tl.store(dmu_ptrs[l] + offs, dmu.to(dmu_ptrs[l].dtype.element_ty), mask=mask)
            tl.store(dlogvar_ptrs[l] + offs, dlogvar.to(dlogvar_ptrs[l].dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
MAX_ELEMENTS = 2**31 - 1  # Philox positions and element offsets are 32-bit
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _launch_config(B: int, Ds: list[int], on_gpu: bool) -> tuple[tuple[int, ...], int, int]:
    """(BLOCK_DS, BLOCK_B, grid size). A program covers BLOCK_B rows of every level in tiles of about
    4096 elements on a GPU; the interpreter pays ~2 ms per program, so it gets 16x larger tiles."""
    tile = 4096 if on_gpu else 65536
    block_ds = tuple(min(triton.next_power_of_2(D), 1024 if on_gpu else 4096) for D in Ds)
    block_b = max(1, min(triton.next_power_of_2(B), tile // max(block_ds)))
    return block_ds, block_b, triton.cdiv(B, block_b)


def _check_levels(mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor] | None) -> None:
    if len(mus) == 0 or len(mus) != len(logvars) or (eps is not None and len(eps) != len(mus)):
        raise ValueError(f"mus, logvars (and eps) need one entry per level; got {len(mus)}, {len(logvars)}"
                         + ("" if eps is None else f", {len(eps)}"))
    B, dtype, device = mus[0].shape[0] if mus[0].dim() == 2 else -1, mus[0].dtype, mus[0].device
    for l, (mu, logvar) in enumerate(zip(mus, logvars)):
        if mu.dim() != 2 or mu.shape != logvar.shape or mu.shape[0] != B:
            raise ValueError(f"level {l}: mu and logvar must both be [B, D] with the same B on every level; "
                             f"got {tuple(mu.shape)} and {tuple(logvar.shape)} (B = {B})")
        if eps is not None and eps[l].shape != mu.shape:
            raise ValueError(f"level {l}: eps must match mu's shape {tuple(mu.shape)}; got {tuple(eps[l].shape)}")
        tensors = (mu, logvar) if eps is None else (mu, logvar, eps[l])
        if any(t.dtype != dtype or t.device != device for t in tensors):
            raise ValueError(f"level {l}: every input must be {dtype} on {device} like level 0's mu; got "
                             + ", ".join(f"{t.dtype} on {t.device}" for t in tensors))
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"reparam_kl needs floating-point inputs {FLOAT_DTYPES}; got {dtype}")
    if B * sum(mu.shape[1] for mu in mus) > MAX_ELEMENTS:
        raise ValueError(f"the fused reparam_kl handles at most {MAX_ELEMENTS} elements per call (32-bit offsets); "
                         "split the batch")


def _noise_offsets(B: int, Ds: list[int]) -> tuple[int, ...]:
    offsets, total = [], 0
    for D in Ds:
        offsets.append(total)
        total += B * D
    return tuple(offsets)


# The fused op as torch.library custom ops (forward, backward, autograd and fake/meta functions), so
# torch.compile keeps it in its graph instead of breaking it, and CUDA-graph capture records it.
# The Philox seed is a [1] int64 tensor on the inputs' device, drawn there by torch.randint from the
# device's generator and read by the kernels: no host read, so a captured CUDA graph draws fresh
# noise on every replay (the CUDA generator advances its offset per replay) and the compiled graph
# has no .item() in it.
def _launch(kernel, mus, B: int, Ds: list[int], *args, has_eps: bool) -> None:
    block_ds, block_b, grid = _launch_config(B, Ds, mus[0].is_cuda)
    if B > 0:
        kernel[(grid,)](*args, L=len(mus), BLOCK_B=block_b, BLOCK_DS=block_ds, HAS_EPS=has_eps,
                        COMPUTE=tl.float64 if mus[0].dtype == torch.float64 else tl.float32,
                        num_warps=4 if max(block_ds) * block_b <= 4096 else 8)


@torch.library.custom_op("vlae_fast::reparam_kl_fwd", mutates_args=())
def _reparam_kl_fwd(mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor], seed: Tensor) -> list[Tensor]:
    """[*zs, kl]: z_l [B, D_l] and kl [B, L]. eps = [] draws the noise in the kernel from `seed`."""
    mus, logvars, eps = ([t.contiguous() for t in ts] for ts in (mus, logvars, eps))  # rows as i * D_l + j
    B, Ds, L = mus[0].shape[0], [mu.shape[1] for mu in mus], len(mus)
    dtype, out_dtype = mus[0].dtype, kernel_out_dtype(mus[0].dtype)
    zs = [torch.empty_like(mu, dtype=out_dtype) for mu in mus]
    kl = torch.empty(B, L, dtype=out_dtype, device=mus[0].device)
    _launch(_reparam_kl_fwd_kernel, mus, B, Ds, tuple(mus), tuple(logvars), tuple(eps or mus), tuple(zs), kl,
            tuple(Ds), _noise_offsets(B, Ds), B, seed, has_eps=bool(eps))
    return [z.to(dtype) for z in zs] + [kl.to(dtype)]  # .to: no-ops except in the interpreter


@_reparam_kl_fwd.register_fake
def _(mus, logvars, eps, seed):
    return [torch.empty_like(mu) for mu in mus] + [mus[0].new_empty(mus[0].shape[0], len(mus))]


@torch.library.custom_op("vlae_fast::reparam_kl_bwd", mutates_args=())
def _reparam_kl_bwd(mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor], seed: Tensor, dzs: list[Tensor],
                    dkl: Tensor) -> list[Tensor]:
    """[*dmus, *dlogvars] for the forward pass with the same mus, logvars, eps and seed."""
    mus, logvars, eps, dzs = ([t.contiguous() for t in ts] for ts in (mus, logvars, eps, dzs))
    B, Ds = mus[0].shape[0], [mu.shape[1] for mu in mus]
    dtype, out_dtype = mus[0].dtype, kernel_out_dtype(mus[0].dtype)
    dmus = [torch.empty_like(mu, dtype=out_dtype) for mu in mus]
    dlogvars = [torch.empty_like(lv, dtype=out_dtype) for lv in logvars]
    _launch(_reparam_kl_bwd_kernel, mus, B, Ds, tuple(mus), tuple(logvars), tuple(eps or mus), tuple(dzs),
            dkl.contiguous(), tuple(dmus), tuple(dlogvars), tuple(Ds), _noise_offsets(B, Ds), B, seed,
            has_eps=bool(eps))
    return [d.to(dtype) for d in dmus + dlogvars]


@_reparam_kl_bwd.register_fake
def _(mus, logvars, eps, seed, dzs, dkl):
    return [torch.empty_like(t) for t in mus + logvars]


def _reparam_kl_setup(ctx, inputs, output) -> None:
    mus, logvars, eps, seed = inputs
    ctx.L, ctx.has_eps = len(mus), bool(eps)
    ctx.save_for_backward(*mus, *logvars, *eps, seed)


def _reparam_kl_backward(ctx, grads):
    L, saved = ctx.L, ctx.saved_tensors
    mus, logvars, eps, seed = list(saved[:L]), list(saved[L : 2 * L]), list(saved[2 * L : -1]), saved[-1]
    # autograd passes None for an output whose gradient is zero (an unused z_l or kl)
    dzs = [torch.zeros_like(mu) if g is None else g for g, mu in zip(grads[:L], mus)]
    dkl = torch.zeros(mus[0].shape[0], L, dtype=mus[0].dtype, device=mus[0].device) if grads[L] is None else grads[L]
    d = _reparam_kl_bwd(mus, logvars, eps, seed, dzs, dkl)
    return d[:L], d[L:], [None] * len(eps), None  # no gradient to the noise or the seed


_reparam_kl_fwd.register_autograd(_reparam_kl_backward, setup_context=_reparam_kl_setup)


def draw_seed(device: torch.device) -> Tensor:
    """A Philox seed from torch's generator for `device` (so torch.manual_seed repeats it), left there."""
    return torch.randint(0, 2**31 - 1, (1,), device=device)


def reparam_kl_multi_triton(
    mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor] | None = None
) -> tuple[list[Tensor], Tensor]:
    """Fused reparam_kl_multi: every level in one kernel launch (and one in backward).

    mus[l], logvars[l]: [B, D_l] of one dtype and device (widths may differ); eps: a matching list,
    or None for in-kernel Philox noise. Returns the list of z_l [B, D_l] and kl [B, L] (column l =
    level l's KL), in the inputs' dtype; arithmetic is float32 (float64 for float64 inputs).
    Non-contiguous inputs are copied to contiguous ones first.
    """
    _check_levels(mus, logvars, eps)
    L = len(mus)
    seed = mus[0].new_zeros(1, dtype=torch.int64) if eps is not None else draw_seed(mus[0].device)
    out = _reparam_kl_fwd(list(mus), list(logvars), list(eps) if eps is not None else [], seed)
    return list(out[:L]), out[L]


def reparam_kl_triton(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused reparam_kl: z [B, D] and kl [B] in one kernel pass (the one-level case of the multi op)."""
    zs, kl = reparam_kl_multi_triton([mu], [logvar], None if eps is None else [eps])
    return zs[0], kl[:, 0]
