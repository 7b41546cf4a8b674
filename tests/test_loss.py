"""The fused, chunked output loss equals PyTorch's cross-entropy, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

import nmt.loss
from nmt.loss import output_loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_loss_equals_cross_entropy(monkeypatch, smoothing, with_bias):
    monkeypatch.setattr(nmt.loss, "CHUNK_BYTES", 4 * 37 * 5)  # 5 rows a chunk: several chunks
    torch.manual_seed(0)
    hidden = torch.randn(23, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(37, 9, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(37, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 37, (23,))
    inputs = [hidden, weight] + ([bias] if with_bias else [])

    expected = F.cross_entropy(
        F.linear(hidden, weight, bias), targets, reduction="sum", label_smoothing=smoothing
    )
    expected_grads = torch.autograd.grad(3.0 * expected, inputs)
    ours = output_loss(hidden, weight, bias, targets, smoothing)
    grads = torch.autograd.grad(3.0 * ours, inputs)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    for mine, reference in zip(grads, expected_grads):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # validation: the loss alone
        assert output_loss(hidden, weight, bias, targets, smoothing).item() == pytest.approx(
            expected.item(), rel=1e-6
        )


def test_fused_loss_in_bfloat16_tracks_float32(monkeypatch):
    """Under CPU autocast the hidden states arrive in bfloat16: the products run in bf16, the
    softmax, loss and weight gradient are summed in float32. Tolerance: 1% on the loss, 2% on
    each gradient's norm of difference (bf16 keeps 8 bits of mantissa)."""
    monkeypatch.setattr(nmt.loss, "CHUNK_BYTES", 4 * 300 * 16)  # several chunks
    torch.manual_seed(0)
    hidden = torch.randn(70, 32, requires_grad=True)
    weight = (0.2 * torch.randn(300, 32)).requires_grad_()
    bias = torch.randn(300, requires_grad=True)
    targets = torch.randint(0, 300, (70,))
    expected = output_loss(hidden, weight, bias, targets, 0.1)
    expected_grads = torch.autograd.grad(expected, [hidden, weight, bias])
    low = hidden.detach().to(torch.bfloat16).requires_grad_()
    ours = output_loss(low, weight, bias, targets, 0.1)
    grads = torch.autograd.grad(ours, [low, weight, bias])
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(expected.item(), rel=1e-2)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    for mine, reference in zip(grads, expected_grads):
        assert ((mine.float() - reference).norm() / reference.norm()).item() < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_empty_share_of_a_batch_has_zero_loss_and_zero_gradients(dtype):
    """No rows (a batch with no target tokens) give a zero loss, zero weight gradients and an
    empty hidden gradient, with or without autograd: the reused buffers are then empty too."""
    hidden = torch.zeros(0, 8, dtype=dtype, requires_grad=True)
    weight = torch.randn(13, 8, requires_grad=True)
    bias = torch.randn(13, requires_grad=True)
    targets = torch.zeros(0, dtype=torch.long)
    loss = output_loss(hidden, weight, bias, targets, 0.1)
    grads = torch.autograd.grad(loss, [hidden, weight, bias])
    assert loss.item() == 0.0
    assert grads[0].shape == (0, 8) and not grads[1].any() and not grads[2].any()
    with torch.no_grad():
        assert output_loss(hidden, weight, bias, targets, 0.1).item() == 0.0


def test_a_trained_bias_alone_still_gets_its_gradient():
    """Frozen hidden states and weight, a trained bias: the loss is still differentiable."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(6, 5), torch.randn(11, 5)
    bias = torch.randn(11, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    expected = F.cross_entropy(
        F.linear(hidden, weight, bias), targets, reduction="sum", label_smoothing=0.1
    )
    (expected_grad,) = torch.autograd.grad(expected, [bias])
    (grad,) = torch.autograd.grad(output_loss(hidden, weight, bias, targets, 0.1), [bias])
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)
