"""The fused optimisers: the same updates as torch's default Adam/AdamW (float rounding aside)."""
import torch

from components.optim import adam, adamw


def _run(make, fused_default: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = make(model.parameters())
    assert bool(opt.defaults["fused"]) is fused_default
    start = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(32, 7), torch.randint(0, 3, (32,))
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(model.parameters(), start))  # it did train
    return [p.detach().clone() for p in model.parameters()]


def test_fused_adam_and_adamw_match_the_default_implementation():
    for ours, ref in ((lambda p: adam(p, 1e-2, 1e-4), lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4)),
                      (lambda p: adamw(p, 1e-2, 0.05), lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05))):
        got, want = _run(ours, True), _run(ref, False)
        assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want))
