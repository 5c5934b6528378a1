"""Denoiser: shapes with token/pooled text, hardness on/off, masking, CFG drop and role sensitivity."""
from __future__ import annotations

import pytest
import torch

from components.diffaug.denoiser import Attention, Denoiser
from components.errors import InputError

B, D, E, T, K = 5, 37, 12, 3, 6


def _nonzero(model: Denoiser) -> Denoiser:
    """adaLN-zero starts with gates at 0 (output ignores conditions): perturb so conditioning is visible."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_shapes_token_and_pooled_text_with_and_without_hardness():
    torch.manual_seed(0)
    x, t = torch.randn(B, D), torch.randint(0, 1000, (B,))
    for k in (0, K):
        m = Denoiser(D, E, k, hidden=32, layers=2, heads=4, tokens=4)
        hard = torch.rand(B, K) if k else None
        assert m(x, t, torch.randn(B, T, E), torch.ones(B, T, dtype=torch.bool), hard).shape == (B, D)
        assert m(x, t, torch.randn(B, E), None, hard).shape == (B, D)
    # a feature dimension not divisible by the token count is padded then cropped
    assert m.tokens * m.chunk >= D


def test_padding_tokens_are_ignored_and_drop_hides_conditions():
    m = _nonzero(Denoiser(D, E, K, hidden=32, layers=2, heads=4, tokens=4))
    x, t, hard = torch.randn(B, D), torch.full((B,), 500), torch.rand(B, K)
    text = torch.randn(B, T, E)
    mask = torch.tensor([[True, True, False]] * B)
    other = text.clone()
    other[:, 2] = 100.0  # content of a masked-out token
    with torch.no_grad():
        assert torch.allclose(m(x, t, text, mask, hard), m(x, t, other, mask, hard), atol=1e-5)
        assert not torch.allclose(m(x, t, text, mask, hard), m(x, t, other, None, hard), atol=1e-3)
        drop = torch.ones(B, dtype=torch.bool)
        a = m(x, t, text, mask, hard, drop)
        b = m(x, t, torch.randn(B, T, E), mask, torch.rand(B, K), drop)
        assert torch.allclose(a, b, atol=1e-5)  # unconditional output ignores text and hardness
        assert not torch.allclose(a, m(x, t, text, mask, hard), atol=1e-3)
        # hardness changes the conditional output
        assert not torch.allclose(m(x, t, text, mask, hard), m(x, t, text, mask, torch.rand(B, K)), atol=1e-3)


def test_swapping_subject_and_object_tokens_changes_the_condition():
    m = _nonzero(Denoiser(D, E, 0, hidden=32, layers=2, heads=4, tokens=4))
    x, t = torch.randn(B, D), torch.full((B,), 300)
    subj, pred, obj = torch.randn(B, 1, E), torch.randn(B, 1, E), torch.randn(B, 1, E)
    with torch.no_grad():
        a = m(x, t, torch.cat([subj, pred, obj], 1))
        b = m(x, t, torch.cat([obj, pred, subj], 1))
    assert (a - b).abs().max() > 1e-3


def test_bad_shapes_raise_input_errors():
    m = Denoiser(D, E, K, hidden=32, layers=1, heads=4, tokens=4)
    x, t = torch.randn(B, D), torch.zeros(B, dtype=torch.long)
    with pytest.raises(InputError, match="hardness"):
        m(x, t, torch.randn(B, E), None, None)
    with pytest.raises(InputError, match="text"):
        m(x, t, torch.randn(B, E + 1), None, torch.rand(B, K))
    with pytest.raises(InputError, match="x"):
        m(torch.randn(B, D + 1), t, torch.randn(B, E), None, torch.rand(B, K))
    with pytest.raises(InputError, match="hidden"):
        Denoiser(D, E, K, hidden=30, heads=4)


def test_attention_equals_the_multihead_attention_module_in_values_and_gradients():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ours = Attention(16, 4)
    ours.load_state_dict(attn.state_dict())  # same parameters, same state_dict keys
    pad = torch.zeros(B, 7, dtype=torch.bool)
    pad[:, 5:] = True
    pad[0, 2:] = True  # rows differ in how many keys they may see
    outs, grads = [], []
    for fn in (lambda q, c: attn(q, c, c, key_padding_mask=pad, need_weights=False)[0],
               lambda q, c: ours(q, c, pad)):
        q = torch.randn(B, 8, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        c = torch.randn(B, 7, 16, generator=torch.Generator().manual_seed(2)).requires_grad_()
        out = fn(q, c)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        mod = attn if len(outs) == 1 else ours
        grads.append([q.grad, c.grad, mod.in_proj_weight.grad, mod.out_proj.weight.grad])
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    for g_new, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_new, g_ref, atol=1e-6, rtol=1e-5)
    # padded keys are really ignored: changing them does not change the output
    c2 = torch.randn(B, 7, 16)
    c3 = c2.clone()
    c3[:, 5:] += 10.0
    torch.testing.assert_close(ours(outs[0], c2, pad), ours(outs[0], c3, pad))
    # self-attention (no context: one fused q/k/v projection) equals the module's self-attention
    x = torch.randn(B, 8, 16)
    torch.testing.assert_close(ours(x), attn(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)


def test_cached_context_gives_the_uncached_output_at_every_timestep():
    """Sampling projects the condition's cross-attention keys/values once (`cache_context`) and only the
    timestep token per step: the output equals the uncached one for a sequence of timesteps (the timestep's
    slot is rewritten, not stale), in a guided batch where half the rows drop their condition."""
    m = _nonzero(Denoiser(D, E, K, hidden=32, layers=2, heads=4, tokens=4))
    x, hard = torch.randn(2 * B, D), torch.rand(2 * B, K)
    text, mask = torch.randn(2 * B, T, E), torch.tensor([[True, True, False]] * (2 * B))
    drop = torch.arange(2 * B) >= B
    with torch.inference_mode():
        cond = m.encode_condition(text, mask, hard, drop)
        cached = m.cache_context(cond)
        assert cached.kv is not None and len(cached.kv) == len(m.blocks)
        outs = []
        for step in (999, 500, 3):
            t = torch.full((2 * B,), step)
            outs.append(m.denoise(x, t, cached))
            torch.testing.assert_close(outs[-1], m.denoise(x, t, cond), atol=1e-6, rtol=1e-5)
        assert (outs[0] - outs[2]).abs().max() > 1e-3  # the timestep token matters, so a stale slot would show


def test_cache_context_refuses_autograd():
    m = Denoiser(D, E, 0, hidden=32, layers=1, heads=4, tokens=4)
    cond = m.encode_condition(torch.randn(B, E))
    with pytest.raises(InputError, match="cache_context"):
        m.cache_context(cond)
