r"""The D×D matrix of a "same"-padded convolution, and the structure the SNF conv rule uses.

A convolution ``z = w ⋆ h`` (PyTorch ``conv2d``: cross-correlation, stride 1, zero padding
p = (K−1)/2, kernel ``w`` of shape (C_out, C_in, K, K)) on images of size H×W is the linear map
``vec z = T(w) vec h`` with D = C·H·W and ``vec`` the C-order flattening of (C, H, W) — the same
flattening as ``x.flatten(1)``. T(w) is linear in w:

.. math::  T(w) = \textstyle\sum_{o,i,a,b} w_{oiab}\, A_{oiab},

with 0/1 matrices A_{oiab} (tap (a, b) from input channel i to output channel o). Three facts
follow (Keller et al., ICML 2021, §3.2 and Appendix A.2):

* **Adjoint.** ``∂⟨T(w), M⟩/∂w = Σ A_{oiab} ⊙ M`` (:func:`conv_matrix_adjoint`) is the ordinary
  conv weight-gradient with the identity basis as input and the columns of M as output-gradient.
* **Flip.** ``T(w)ᵀ = T(flip(w))`` with ``flip(w)[o,i,a,b] = w[i,o,K−1−a,K−1−b]`` (swap the
  channel axes, mirror both spatial axes) — true for same padding only.
* **Multiplicity.** The A_{oiab} have disjoint supports and A_{oiab} holds
  ``m[a,b] = (H − |a−p|)·(W − |b−p|)`` ones (clamped at 0), so ``⟨A_k, A_l⟩ = δ_kl m_k``
  and ``∂⟨T(w), T(r)ᵀ⟩/∂w = flip(r) ⊙ m``: the kernel-space form of tr(T(r) dT(w)), i.e. of the
  log-det gradient T(w)⁻ᵀ when T(r) = T(w)⁻¹. m is also the weight-gradient of a conv with an
  all-ones input and an all-ones output-gradient (paper Eq. 19). A 1×1 conv has m = H·W; a dense
  layer m = 1.

:func:`conv_matrix` builds T(w) explicitly and differentiably (the conv of the identity basis,
O(D²·C·K²)); it exists for the exact O(D³) baseline (log|det T(w)|, exact inverse) and for tests.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .._compile import is_compiling


def _same_padding(kernel: Tensor) -> int:
    K = kernel.shape[-1]
    if kernel.dim() != 4 or kernel.shape[-2] != K or K % 2 != 1:
        raise ValueError(
            f"expected a square kernel of odd size, shape (C_out, C_in, K, K); got "
            f"{tuple(kernel.shape)}. Same padding needs an odd K."
        )
    return (K - 1) // 2


def conv_matrix(weight: Tensor, spatial_size: tuple[int, int]) -> Tensor:
    """T(w): the (C_out·H·W, C_in·H·W) matrix of the same-padded convolution with ``weight``.

    ``conv_matrix(w, (H, W)) @ h.flatten()`` equals ``conv2d(h, w, padding=(K−1)/2).flatten()``.
    Differentiable in ``weight``; built in ``weight``'s dtype and on its device.
    """
    p = _same_padding(weight)
    H, W = spatial_size
    c_in = weight.shape[1]
    D = c_in * H * W
    basis = torch.eye(D, dtype=weight.dtype, device=weight.device).view(D, c_in, H, W)
    columns = F.conv2d(basis, weight, padding=p)  # row j = T e_j = column j of T
    return columns.reshape(D, -1).t()


def conv_matrix_adjoint(
    matrix: Tensor, kernel_shape: tuple[int, int, int, int], spatial_size: tuple[int, int]
) -> Tensor:
    """∂⟨T(w), M⟩/∂w for a (C_out·H·W, C_in·H·W) matrix M: the adjoint of ``w ↦ T(w)``.

    Returned in the kernel shape; ``conv_matrix_adjoint(T(k), ...) == k ⊙ m``.
    """
    c_out, c_in, K, _ = kernel_shape
    H, W = spatial_size
    D = c_in * H * W
    basis = torch.eye(D, dtype=matrix.dtype, device=matrix.device).view(D, c_in, H, W)
    grad_out = matrix.t().reshape(D, c_out, H, W)
    return torch.nn.grad.conv2d_weight(basis, kernel_shape, grad_out, padding=(K - 1) // 2)


def flip_kernel(kernel: Tensor) -> Tensor:
    """flip(k)[o,i,a,b] = k[i,o,K−1−a,K−1−b], the kernel of T(k)ᵀ (same padding)."""
    return kernel.transpose(0, 1).flip(2, 3)


def multiplicity(
    kernel_size: int,
    spatial_size: tuple[int, int],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """m (K, K): how many times each kernel tap appears in T(w), ``(H − |a−p|)(W − |b−p|)``.

    Computed analytically (no convolution) and cached per (K, H, W, dtype, device); do not modify
    the returned tensor in place. Example: K = 3 on 5×4 images gives
    ``[[12, 16, 12], [15, 20, 15], [12, 16, 12]]``.
    """
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    H, W = (int(s) for s in spatial_size)
    if is_compiling():  # traced into the graph (a constant there); the cache is for eager calls
        return _multiplicity.__wrapped__(int(kernel_size), H, W, dtype, device)
    return _multiplicity(int(kernel_size), H, W, dtype, device)


@functools.lru_cache(maxsize=64)
def _multiplicity(K: int, H: int, W: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # a normal tensor even when first asked for under inference_mode (it may enter autograd later)
    with torch.inference_mode(False), torch.no_grad():
        p = (K - 1) // 2
        offset = (torch.arange(K, dtype=torch.float64) - p).abs()
        rows = (H - offset).clamp(min=0)
        cols = (W - offset).clamp(min=0)
        return torch.outer(rows, cols).to(dtype=dtype, device=device)
