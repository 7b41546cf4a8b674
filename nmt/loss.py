"""The training loss: output layer and label-smoothed cross-entropy, fused and in chunks.

The output layer is where most of a step's memory traffic goes: for a batch of N target tokens
and a vocabulary of V, PyTorch's own ops build the N×V logits, their log-softmax, and in
backward two N×V gradients that are then added (label smoothing uses the log-softmax twice),
each a freshly allocated block of hundreds of MB on a 4,096-token batch. Here the logits are made
a chunk of rows at a time, and since the loss is the last operation, each chunk's gradient is
known at once: softmax − (1−ε)·onehot − ε/V. So forward leaves only the small gradients for the
hidden states, the weight and the bias, and backward scales them. Same loss and gradients as
F.cross_entropy(logits, y, label_smoothing=ε, reduction="sum") (tested).

Each chunk is worked in place in a float32 buffer (and a bfloat16 one under bf16) allocated
once per batch: on CPUs a fresh block per chunk and per operation cost more in page faults than
the arithmetic (about a quarter of a training step on benchmarks/reference.yaml).
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 16 * 2**20  # one chunk's logits, counted as float32


def output_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    smoothing: float,
) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of `targets` (N,) under logits hidden·Wᵀ + b."""
    rows = max(1, CHUNK_BYTES // (4 * weight.size(0)))
    trained = [hidden, weight] + ([bias] if bias is not None else [])
    if torch.is_grad_enabled() and any(t.requires_grad for t in trained):
        return _FusedOutputLoss.apply(hidden, weight, bias, targets, smoothing, rows)
    total = hidden.new_zeros((), dtype=torch.float32)
    buffers = _Buffers(hidden, weight, bias, rows)
    for start in range(0, hidden.size(0), rows):
        scores = buffers.logits(hidden[start : start + rows])
        total += _softmax_loss_(scores, targets[start : start + rows], smoothing).sum()
    return total


class _Buffers:
    """The weights in the hidden states' dtype and the reused per-chunk buffers of one batch."""

    def __init__(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int
    ):
        rows = min(rows, hidden.size(0))
        self.low = hidden.dtype in (torch.bfloat16, torch.float16)
        self.weight = weight.to(hidden.dtype)  # once per batch, not per chunk
        self.bias = bias.to(hidden.dtype) if bias is not None else None
        # float32 (float64 for float64 inputs)
        wide = torch.float32 if self.low else hidden.dtype
        self.scores = hidden.new_empty((rows, weight.size(0)), dtype=wide)
        # logits, then the gradient, in the products' dtype
        self.low_scores = hidden.new_empty((rows, weight.size(0))) if self.low else None

    def logits(self, chunk: torch.Tensor) -> torch.Tensor:
        """chunk·Wᵀ + b (n, V) in float32 (or wider), in the reused buffer."""
        scores = self.scores[: chunk.size(0)]
        product = scores if self.low_scores is None else self.low_scores[: chunk.size(0)]
        if self.bias is not None:
            torch.addmm(self.bias, chunk, self.weight.t(), out=product)
        else:
            torch.mm(chunk, self.weight.t(), out=product)
        return scores if product is scores else scores.copy_(product)

    def in_product_dtype(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` as the products' input: itself, or copied into the low-precision buffer."""
        if self.low_scores is None:
            return scores
        return self.low_scores[: scores.size(0)].copy_(scores)


def _softmax_loss_(scores: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-row loss lse − (1−ε)·z_y − ε·mean(z) of logits `scores` (n, V) in float32 or wider,
    which are turned into their softmax in place."""
    loss = -(1 - smoothing) * scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    if smoothing:
        loss -= smoothing * scores.mean(dim=1)
    top = scores.amax(dim=1, keepdim=True)  # (n, 1)
    sums = scores.sub_(top).exp_().sum(dim=1, keepdim=True)
    scores.div_(sums)
    return loss + (top + sums.log()).squeeze(1)


class _FusedOutputLoss(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # under bf16/fp16 too
    def forward(ctx, hidden, weight, bias, targets, smoothing, rows):
        # The products run in hidden's dtype: float32, or bfloat16 under CPU autocast (CUDA's
        # autocast casts the inputs to float32 above); softmax, loss and the weight and bias
        # gradients are summed in float32 (float64 for float64 inputs).
        buffers = _Buffers(hidden, weight, bias, rows)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias) if bias is not None else None
        low_grad_weight = torch.empty_like(buffers.weight) if buffers.low else None
        vocab = weight.size(0)
        for start in range(0, hidden.size(0), rows):
            chunk, chunk_targets = hidden[start : start + rows], targets[start : start + rows]
            scores = buffers.logits(chunk)
            total += _softmax_loss_(scores, chunk_targets, smoothing).sum()
            # d loss / d logits, made in place of the softmax: softmax − (1−ε)·onehot − ε/V
            if smoothing:
                scores.sub_(smoothing / vocab)
            scores.scatter_add_(
                1,
                chunk_targets.unsqueeze(1),
                scores.new_full((len(chunk_targets), 1), smoothing - 1.0),
            )
            if grad_bias is not None:
                grad_bias += scores.sum(dim=0)
            grad = buffers.in_product_dtype(scores)
            torch.mm(grad, buffers.weight, out=grad_hidden[start : start + rows])
            if low_grad_weight is not None:  # a bfloat16 product, summed in float32
                grad_weight += torch.mm(grad.t(), chunk, out=low_grad_weight)
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
