"""Float8 linear layers for the SDXL UNets' transformer blocks (opt-in: ``recolour.fp8_linear``).

Hopper (H100, H200) and Ada GPUs multiply float8 (e4m3) matrices at twice their bfloat16 rate,
and about 70 % of an SDXL UNet's arithmetic at 1024² is the transformer blocks' linear layers
(attention projections, GEGLU feed-forward, proj_in/out). ``Float8Linear`` keeps its weight in
e4m3 with one scale per output channel, scales each activation row at run time (dynamic
scaling), and multiplies with ``torch._scaled_mm`` (fp32 accumulation, bf16 out). Scales are
powers of two: an exact rescaling that a dtype cast of the module cannot round.

This changes numerics (3 mantissa bits per operand instead of 7), so it is off by default; it
pays only under ``torch.compile``, which fuses the per-row quantisation into the op before it.
"""
from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def _pow2_scale(amax: torch.Tensor) -> torch.Tensor:
    """The power of two that brings ``amax`` to at most the e4m3 maximum (per row)."""
    return torch.exp2(torch.floor(torch.log2(E4M3_MAX / amax.float().clamp(min=1e-12))))


class Float8Linear(torch.nn.Module):
    """``y = x Wᵀ + b`` with ``x`` and ``W`` in float8 e4m3 (per-row / per-output-channel scales)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        to_fp8 = _pow2_scale(weight.abs().amax(dim=1, keepdim=True))  # (N, 1)
        self.register_buffer("weight_fp8", (weight.float() * to_fp8).to(E4M3).contiguous())  # (N, K)
        self.register_buffer("weight_scale", (1.0 / to_fp8).t().contiguous())  # (1, N) fp32, dequantises
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(),
                                                                          requires_grad=False)

    def _apply(self, fn, recurse=True):
        # module.to(dtype) must not re-type the float8 weight or its fp32 scales; both round-trip
        # exactly (e4m3 values and powers of two are representable in bf16/fp16).
        super()._apply(fn, recurse)
        if self.weight_fp8.dtype != E4M3:
            self.weight_fp8 = self.weight_fp8.to(E4M3)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = self.weight_scale.float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        to_fp8 = _pow2_scale(rows.abs().amax(dim=1, keepdim=True))  # (M, 1)
        x_fp8 = (rows.float() * to_fp8).to(E4M3)
        # Row-wise scaled fp8 GEMMs give bf16 out on every backend that has them.
        y = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=1.0 / to_fp8, scale_b=self.weight_scale,
                             out_dtype=torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# Cross-attention keys/values read the 77 text tokens: too few rows to gain from fp8.
_TEXT_SIDE = ("attn2.to_k", "attn2.to_v", "attn2.to_kv")


def float8_linears(unet: torch.nn.Module) -> int:
    """Swap the linear layers inside the UNet's transformer models for ``Float8Linear``.

    Only layers whose sizes suit fp8 GEMMs (multiples of 16) are swapped. Returns how many.
    Fuse QKV projections before calling this (fusing reads the bf16 weights).
    """
    swaps = []
    for owner in unet.modules():
        if type(owner).__name__ != "Transformer2DModel":
            continue
        for name, module in owner.named_modules():
            if (type(module) is torch.nn.Linear and not name.endswith(_TEXT_SIDE)
                    and module.in_features % 16 == 0 and module.out_features % 16 == 0):
                swaps.append((owner, name, module))
    for owner, name, module in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = owner.get_submodule(parent_name) if parent_name else owner
        setattr(parent, child, Float8Linear(module))
    return len(swaps)
