"""The training loss: output layer and label-smoothed cross-entropy, fused and in chunks.

The output layer is where most of a step's memory traffic goes: for a batch of N target tokens
and a vocabulary of V, PyTorch's own ops build the N×V logits, their log-softmax, and in
backward two N×V gradients that are then added (label smoothing uses the log-softmax twice),
each a freshly allocated block of hundreds of MB on a 4,096-token batch. Here the logits are made
a chunk of rows at a time, and since the loss is the last operation, each chunk's gradient is
known at once: softmax − (1−ε)·onehot − ε/V. So forward leaves only the small gradients for the
hidden states, the weight and the bias, and backward scales them. Same loss and gradients as
F.cross_entropy(logits, y, label_smoothing=ε, reduction="sum") (tested).
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 16 * 2**20  # logits of one chunk: stays in the allocator's reused memory


def output_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    smoothing: float,
) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of `targets` (N,) under logits hidden·Wᵀ + b."""
    rows = max(1, CHUNK_BYTES // (4 * weight.size(0)))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedOutputLoss.apply(hidden, weight, bias, targets, smoothing, rows)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), rows):
        logits = _logits(hidden[start : start + rows], weight, bias)
        total += _chunk_loss(logits, targets[start : start + rows], smoothing)[0].sum()
    return total


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = torch.addmm(bias, hidden, weight.t()) if bias is not None else hidden @ weight.t()
    return logits.float()


def _chunk_loss(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss lse − (1−ε)·z_y − ε·mean(z), and the log-sum-exp."""
    lse = torch.logsumexp(logits, dim=1)
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    loss = lse - (1 - smoothing) * target_logits
    if smoothing:
        loss = loss - smoothing * logits.mean(dim=1)
    return loss, lse


class _FusedOutputLoss(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # under bf16/fp16 too
    def forward(ctx, hidden, weight, bias, targets, smoothing, rows):
        # The products run in hidden's dtype: float32, or bfloat16 under CPU autocast (CUDA's
        # autocast casts the inputs to float32 above); softmax, loss and the weight and bias
        # gradients are summed in float32 whichever it is.
        low = hidden.dtype in (torch.bfloat16, torch.float16)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias) if bias is not None else None
        vocab = weight.size(0)
        weight_in = weight.to(hidden.dtype)  # once per batch, not per chunk
        bias_in = bias.to(hidden.dtype) if bias is not None else None
        for start in range(0, hidden.size(0), rows):
            chunk, chunk_targets = hidden[start : start + rows], targets[start : start + rows]
            logits = _logits(chunk, weight_in, bias_in)
            loss, lse = _chunk_loss(logits, chunk_targets, smoothing)
            total += loss.sum()
            # d loss / d logits, made in place of the logits: softmax − (1−ε)·onehot − ε/V
            grad = logits.sub_(lse.unsqueeze(1)).exp_()
            if smoothing:
                grad.sub_(smoothing / vocab)
            grad.scatter_add_(
                1,
                chunk_targets.unsqueeze(1),
                grad.new_full((len(chunk_targets), 1), smoothing - 1.0),
            )
            if grad_bias is not None:
                grad_bias += grad.sum(dim=0)
            grad = grad.to(hidden.dtype)
            torch.mm(grad, weight_in, out=grad_hidden[start : start + rows])
            if low:  # a bfloat16 product, summed in float32
                grad_weight += torch.mm(grad.t(), chunk)
            else:
                grad_weight.addmm_(grad.t(), chunk)
        ctx.save_for_backward(
            grad_hidden, grad_weight, grad_bias if grad_bias is not None else torch.empty(0)
        )
        ctx.has_bias = grad_bias is not None
        return total

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (
            grad_hidden * grad_total,
            grad_weight * grad_total,
            grad_bias * grad_total if ctx.has_bias else None,
            None,
            None,
            None,
        )
