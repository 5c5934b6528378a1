"""softmax_lastdim: torch's softmax values from the padded fast kernel for short rows without gradients, and
torch's own softmax (and gradient) wherever autograd needs it."""
import pytest
import torch

from components.softmax import FAST_WIDTH, softmax_lastdim


@pytest.mark.parametrize("shape", [(7, 1), (510, 11), (4, 2, 8, 7), (3, 15), (5, 16), (2, 40)])
def test_equals_torch_softmax_in_float32(shape):
    x = torch.randn(*shape) * 4
    x[..., 0] = float("-inf") if shape[-1] > 1 else x[..., 0]  # a masked key stays exactly 0
    with torch.no_grad():
        got = softmax_lastdim(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, torch.softmax(x, -1), rtol=1e-6, atol=1e-7)
    if shape[-1] > 1:
        assert (got[..., 0] == 0).all()
    short = shape[-1] < FAST_WIDTH
    assert (got._base is not None and got._base.shape[-1] == FAST_WIDTH) == short  # short rows: padded kernel


def test_bfloat16_rows_are_computed_in_float32_and_returned_in_bfloat16():
    x = (torch.randn(64, 4, 8, 7) * 3).to(torch.bfloat16)
    with torch.inference_mode():
        got = softmax_lastdim(x)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    exact = torch.softmax(x.float(), -1)
    assert (got.float() - exact).abs().max() <= exact.abs().max() * 2**-8  # bf16 rounding of the exact values
    assert (got.float() - exact).abs().max() <= (torch.softmax(x, -1).float() - exact).abs().max()


def test_under_autograd_it_is_torch_softmax_with_its_gradient():
    x = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(6, 5)
    (softmax_lastdim(x) * w).sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    (torch.softmax(ref, -1) * w).sum().backward()
    assert torch.equal(x.grad, ref.grad)
    with torch.no_grad():  # the same tensor without autograd takes the padded kernel
        assert softmax_lastdim(x)._base.shape[-1] == FAST_WIDTH
