"""Transformer denoiser over relation feature vectors, conditioned by cross-attention on text and hardness.

The feature vector (any dimension D: the paper's 4096-d fc7, our 128-d default) is cut into `tokens`
equal chunks (zero-padded at the end) so self-attention relates parts of the vector. Each block does
self-attention over the chunks, cross-attention over the condition tokens, and an MLP (pre-LayerNorm,
residual) with DiT-style adaLN-zero modulation from the timestep embedding plus a pooled condition: the
masked mean of a per-token MLP of the condition tokens (nonlinear before pooling, so role-tagged tokens
"man on horse" / "horse on man" pool differently; a learned null vector when conditions are dropped), a
direct path that makes the class signal easy to learn. The cross-attention condition sequence is: a
learned always-present "null" token (so attention is never fully masked and classifier-free guidance has
an unconditional context), the diffusion timestep token, the text
tokens (token embeddings (B, T, E) with a validity mask, or a pooled (B, E) embedding as a length-1
sequence) plus a learned position embedding (so swapping subject and object tokens changes the condition) and `hardness_tokens` tokens projected from the hardness vector (B, K). `drop` (B,) bool hides
text and hardness for classifier-free guidance. The output has the input's shape; what it means (x0,
epsilon or v) is the caller's prediction type.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from components.errors import InputError
from components.softmax import softmax_lastdim


class Condition(NamedTuple):
    """Timestep-independent condition of a batch: text (+position) and hardness tokens (B, L, H), which of
    them are kept (B, L) bool (False = padding or dropped for guidance), and their pooled vector (B, H)."""

    tokens: torch.Tensor
    keep: torch.Tensor
    pooled: torch.Tensor
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None  # per block: keys, values; `cache_context`


class Attention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` (batch_first, no dropout; same parameters and state_dict) called as
    `(query, context=None, key_padding_mask=None)` (no context: self-attention, one fused q/k/v projection)
    and computed on its own weights with two batched matmuls and a softmax. The module's generic path (taken
    whenever query and key differ) transposes to sequence-first and copies every projection (~4% of a
    sampling step), and torch's fused CPU attention is slow on these short sequences (a handful of chunk or
    condition tokens): cross-attention 2.1-2.3x slower in bf16 sampling, 1.1x in fp32; in bf16 training its
    backward alone was ~13% of a step. `key_padding_mask` (B, Lk) True = ignore, as in the module; a row
    must keep at least one key (the denoiser's null token always is). Cross-attention can also take keys and
    values projected beforehand (`project_kv`, head-split and contiguous), as sampling does once per batch."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__(embed_dim, num_heads, batch_first=True)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `context` (B, Lk, E), each (B, heads, Lk, E / heads) and contiguous: the layout the
        attention matmuls read without a copy (a cached context is then not copied again at every step)."""
        e, heads = self.embed_dim, self.num_heads
        b, lk = context.shape[0], context.shape[1]
        kv = nn.functional.linear(context, self.in_proj_weight[e:], self.in_proj_bias[e:])
        k, v = kv.view(b, lk, 2, heads, e // heads).permute(2, 0, 3, 1, 4).contiguous()
        return k, v

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None,  # type: ignore[override]
                key_padding_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Self-attention without `context` and `kv`; cross-attention over `context`, or over keys/values
        `kv` already projected by `project_kv` (then `context` is not read)."""
        e, heads = self.embed_dim, self.num_heads
        b, lq = query.shape[0], query.shape[1]
        w, bias = self.in_proj_weight, self.in_proj_bias
        if context is None and kv is None:
            q, k, v = nn.functional.linear(query, w, bias).view(b, lq, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
        else:
            k, v = self.project_kv(context) if kv is None else kv
            q = nn.functional.linear(query, w[:e], bias[:e]).view(b, lq, heads, e // heads).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (e // heads) ** -0.5
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = torch.matmul(softmax_lastdim(scores).to(v.dtype), v)  # fast over < 16 keys when sampling
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, e))


class _Block(nn.Module):
    """adaLN-zero block (DiT): modulated self-attention over chunks, cross-attention over conditions, MLP."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.n3 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.n2, self.nc = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.self_attn, self.cross_attn = Attention(hidden, heads), Attention(hidden, heads)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(),
                                 nn.Linear(mlp_ratio * hidden, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def context_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (B, heads, L, H / heads) of condition tokens `ctx` (B, L, H)."""
        return self.cross_attn.project_kv(self.nc(ctx))

    def forward(self, x: torch.Tensor, cvec: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                ctx_pad: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(cvec)[:, None, :].chunk(6, dim=-1)
        h = torch.addcmul(sh1, self.n1(x), 1 + sc1)  # fused x * (1 + scale) + shift: one pass, not two
        x = torch.addcmul(x, g1, self.self_attn(h))
        x = x + self.cross_attn(self.n2(x), key_padding_mask=ctx_pad, kv=kv)
        return torch.addcmul(x, g2, self.mlp(torch.addcmul(sh2, self.n3(x), 1 + sc2)))


class Denoiser(nn.Module):
    """Denoiser(feature_dim, cond_dim, hardness_dim, ...)(x_t (B,D), t (B,), text, text_mask, hardness, drop) -> (B,D).

    `hardness_dim=0` builds a model without hardness conditioning. `text` is (B, T, cond_dim) with
    `text_mask` (B, T) bool (True = real token) or pooled (B, cond_dim) (mask ignored).
    """

    def __init__(self, feature_dim: int, cond_dim: int, hardness_dim: int = 0, hidden: int = 256,
                 layers: int = 4, heads: int = 4, tokens: int = 8, hardness_tokens: int = 2,
                 mlp_ratio: int = 4, max_text_tokens: int = 77) -> None:
        super().__init__()
        for name, v in (("feature_dim", feature_dim), ("cond_dim", cond_dim), ("hidden", hidden),
                        ("layers", layers), ("heads", heads), ("tokens", tokens)):
            if v < 1:
                raise InputError(f"Denoiser.{name}", f"is {v}", "a positive integer")
        if hidden % heads:
            raise InputError("Denoiser.hidden", f"{hidden} is not divisible by heads={heads}", "hidden % heads == 0")
        if hardness_dim < 0:
            raise InputError("Denoiser.hardness_dim", f"is {hardness_dim}", ">= 0 (0 = no hardness)")
        self.feature_dim, self.cond_dim, self.hardness_dim = feature_dim, cond_dim, hardness_dim
        self.tokens = min(tokens, feature_dim)
        self.chunk = math.ceil(feature_dim / self.tokens)
        self.hardness_tokens = hardness_tokens if hardness_dim else 0
        self.inp = nn.Linear(self.chunk, hidden)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, hidden) * 0.02)
        self.t_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embed = TimestepEmbedding(hidden, hidden)
        self.null = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.text_proj = nn.Linear(cond_dim, hidden)
        self.text_pos = nn.Parameter(torch.randn(1, max_text_tokens, hidden) * 0.02)
        self.hard_proj = nn.Linear(hardness_dim, hidden * self.hardness_tokens) if hardness_dim else None
        self.blocks = nn.ModuleList(_Block(hidden, heads, mlp_ratio) for _ in range(layers))
        self.pool_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.out_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, self.chunk)

    def encode_condition(self, text: torch.Tensor, text_mask: torch.Tensor | None = None,
                         hardness: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> Condition:
        """The timestep-independent part of the condition (computed once per batch when sampling many steps)."""
        b = text.shape[0]
        if text.dim() == 2:
            text, text_mask = text[:, None, :], None
        max_t = self.text_pos.shape[1]
        if text.dim() != 3 or text.shape[2] != self.cond_dim or text.shape[1] > max_t:
            raise InputError("text", f"shape {tuple(text.shape)}",
                             f"(B, T <= {max_t}, {self.cond_dim}) or (B, {self.cond_dim})")
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        elif text_mask.shape != text.shape[:2]:
            raise InputError("text_mask", f"shape {tuple(text_mask.shape)}", f"{tuple(text.shape[:2])}")
        parts = [self.text_proj(text) + self.text_pos[:, : text.shape[1]]]
        keep = [text_mask.bool()]
        if self.hard_proj is not None:
            if hardness is None or hardness.shape != (b, self.hardness_dim):
                got = None if hardness is None else tuple(hardness.shape)
                raise InputError("hardness", f"got {got}", f"({b}, {self.hardness_dim})")
            parts.append(self.hard_proj(hardness).view(b, self.hardness_tokens, -1))
            keep.append(torch.ones(b, self.hardness_tokens, dtype=torch.bool, device=text.device))
        cond_keep = torch.cat(keep, dim=1)
        if drop is not None:
            cond_keep = cond_keep & ~drop.bool()[:, None]
        cond = torch.cat(parts, dim=1)
        w = cond_keep.to(cond.dtype)[..., None]
        pooled = (self.pool_mlp(cond) * w).sum(1) / w.sum(1).clamp_min(1.0)
        pooled = torch.where(cond_keep.any(1)[:, None], pooled, self.null[:, 0].to(pooled.dtype))
        return Condition(cond, cond_keep, pooled)

    def cache_context(self, cond: Condition) -> Condition:
        """`cond` with every block's cross-attention keys/values of its timestep-independent tokens (the null
        token and the condition) computed once, so that each sampling step projects only its timestep token:
        the context is [null, timestep, condition...] and its projection was the denoiser's largest GEMM
        where text has many tokens (the `paper` preset's 77 CLIP tokens). Sampling only: every `denoise`
        call writes its timestep token's keys/values into slot 1 of these buffers, so autograd is refused."""
        if torch.is_grad_enabled():
            raise InputError("Denoiser.cache_context", "called with autograd enabled",
                             "torch.no_grad() or torch.inference_mode() (a cached condition is for sampling)")
        b = cond.tokens.shape[0]
        null = self.null.expand(b, 1, -1)
        ctx = torch.cat([null, null, cond.tokens], dim=1)  # slot 1 (the timestep token) is rewritten per step
        return cond._replace(kv=tuple(blk.context_kv(ctx) for blk in self.blocks))

    def _context_kv(self, temb: torch.Tensor, cond: Condition) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, cross-attention keys and values of [null, timestep token, condition tokens]."""
        if cond.kv is not None:
            for blk, (k, v) in zip(self.blocks, cond.kv):
                k[:, :, 1:2], v[:, :, 1:2] = blk.context_kv(temb[:, None, :])
            return list(cond.kv)
        ctx = torch.cat([self.null.expand(temb.shape[0], 1, -1), temb[:, None, :], cond.tokens], dim=1)
        return [blk.context_kv(ctx) for blk in self.blocks]

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None,
                hardness: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Model output for noisy features `x` (B, D) at integer timesteps `t` (B,)."""
        self._check_x(x)
        return self.denoise(x, t, self.encode_condition(text, text_mask, hardness, drop))

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.feature_dim:
            raise InputError("x", f"shape {tuple(x.shape)}", f"(B, {self.feature_dim})")

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """`forward` with a condition from `encode_condition` (sampling reuses it across all timesteps)."""
        self._check_x(x)
        b = x.shape[0]
        pad = self.tokens * self.chunk - self.feature_dim
        xs = nn.functional.pad(x, (0, pad)).view(b, self.tokens, self.chunk)
        temb = self.t_embed(self.t_proj(t.reshape(-1).expand(b)).to(x.dtype))
        if cond.tokens.shape[0] != b:
            raise InputError("text", f"{cond.tokens.shape[0]} rows", f"{b} rows, one per row of x")
        h = self.inp(xs) + self.pos
        ctx_pad = ~torch.cat([torch.ones(b, 2, dtype=torch.bool, device=x.device), cond.keep], dim=1)
        cvec = temb + cond.pooled
        for blk, kv in zip(self.blocks, self._context_kv(temb, cond)):
            h = blk(h, cvec, kv, ctx_pad)
        sh, sc = self.out_ada(cvec)[:, None, :].chunk(2, dim=-1)
        return self.out(torch.addcmul(sh, self.out_norm(h), 1 + sc)).reshape(b, -1)[:, : self.feature_dim]
