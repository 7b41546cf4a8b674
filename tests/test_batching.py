import numpy as np

from nmt.data.batching import collate, make_batches
from nmt.data.corpus import EncodedSplit
from nmt.data.subwords import BOS, EOS, PAD


def random_lengths(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 40, n), rng.integers(1, 40, n)


def test_every_pair_once_and_no_batch_over_budget():
    src, tgt = random_lengths()
    for epoch in range(3):
        batches = make_batches(src, tgt, 300, 0, seed=1, epoch=epoch)
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(len(src)))
        for batch in batches:
            longest = max(src[batch].max(), tgt[batch].max()) + 1
            assert longest * len(batch) <= 300


def test_deterministic_per_seed_and_epoch_and_shuffled_between_epochs():
    src, tgt = random_lengths()
    first = make_batches(src, tgt, 300, 0, seed=1, epoch=0)
    again = make_batches(src, tgt, 300, 0, seed=1, epoch=0)
    other = make_batches(src, tgt, 300, 0, seed=1, epoch=1)
    assert len(first) == len(again) and all((a == b).all() for a, b in zip(first, again))
    assert [b.tolist() for b in first] != [b.tolist() for b in other]


def test_sentence_count_batches():
    src, tgt = random_lengths(103)
    batches = make_batches(src, tgt, 0, 10, seed=1, epoch=0)
    assert sorted(len(b) for b in batches) == [3] + [10] * 10


def test_collate_pads_and_adds_bos_eos():
    data = EncodedSplit(
        np.array([5, 6, 7, 8], dtype=np.int32),
        np.array([0, 3, 4]),
        np.array([9, 10, 11], dtype=np.int32),
        np.array([0, 1, 3]),
        np.arange(2),
    )
    batch = collate(data, np.array([0, 1]))
    assert batch.source.tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert batch.source_lengths.tolist() == [4, 2]
    assert batch.target_in.tolist() == [[BOS, 9, PAD], [BOS, 10, 11]]
    assert batch.target_out.tolist() == [[9, EOS, PAD], [10, 11, EOS]]
    assert batch.target_tokens == 5
