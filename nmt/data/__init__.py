"""Data: corpora (text) → subwords (ids) → batches (padded tensors)."""
