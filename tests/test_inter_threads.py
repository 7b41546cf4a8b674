"""`decode.inter_threads`: batches searched at once on a CPU, each with its share of PyTorch's
threads, give the outputs of one batch at a time."""

from __future__ import annotations

import threading

import pytest
import torch

from nmt.errors import NmtError
from nmt.translate import Translator

from conftest import QUICKSTART, trained_run

SEARCH = Translator._search  # the original, also while a Recorder has replaced it
LINES = (QUICKSTART / "test.de").read_text(encoding="utf-8").splitlines()[:30]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("inter_threads"))


@pytest.fixture
def two_threads():
    """PyTorch with 2 threads (CI's default on 2 cores; a developer may run with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class Recorder:
    """Wraps Translator._search: which thread ran each batch, with how many PyTorch threads.
    The first two searches wait for each other, so two at once is proven, not hoped for."""

    def __init__(self, monkeypatch, concurrent: bool, fail_at: int = 0, error: type = NmtError):
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(2, timeout=60) if concurrent else None

        def recorded(translator, *args, **kwargs):
            with self.lock:
                self.calls.append((threading.get_ident(), torch.get_num_threads()))
                number = len(self.calls)
            if self.barrier is not None and number <= 2:
                self.barrier.wait()
            if number == fail_at:
                raise error("batch failed")
            return SEARCH(translator, *args, **kwargs)

        monkeypatch.setattr(Translator, "_search", recorded)


@pytest.mark.parametrize(
    "options",
    [
        dict(beam=3, nbest=2),
        dict(beam=1),
        dict(sample=True, nbest=2, seed=7),
        dict(beam=3, shortlist=5, quantize="int8"),
        dict(beam=3, precision="bf16"),
    ],
    ids=["beam", "greedy", "sampling", "int8-shortlist", "bf16"],
)
def test_batches_searched_at_once_give_the_outputs_of_one_at_a_time(run, two_threads, options):
    options = dict(options)
    translator = Translator.from_run(run, quantize=options.pop("quantize", ""))
    nbest = options.pop("nbest", 1)
    alone = translator.nbest(LINES, nbest, batch_size=4, inter_threads=1, **options)
    together = translator.nbest(LINES, nbest, batch_size=4, inter_threads=2, **options)
    for hyps_alone, hyps_together in zip(alone, together, strict=True):
        assert [h.text for h in hyps_alone] == [h.text for h in hyps_together]
        for a, b in zip(hyps_alone, hyps_together):
            assert a.score == pytest.approx(b.score, abs=1e-5)  # float32 rounds per thread count


def test_each_batch_gets_its_share_of_pytorchs_threads(run, two_threads, monkeypatch):
    translator = Translator.from_run(run)
    threads_before = threading.active_count()
    recorder = Recorder(monkeypatch, concurrent=True)
    translator.translate(LINES, batch_size=4, inter_threads=2)
    assert len(recorder.calls) == 8  # 30 lines in batches of 4
    workers = {ident for ident, _ in recorder.calls}
    assert len(workers) == 2 and threading.get_ident() not in workers
    assert {threads for _, threads in recorder.calls} == {1}
    assert torch.get_num_threads() == 2  # the caller's threads, as they were
    assert threading.active_count() == threads_before  # no worker left behind
    later: list[int] = []  # and a thread started later gets PyTorch's default again
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2]


@pytest.mark.parametrize(
    "inter_threads, torch_threads",
    [(1, 2), (0, 1), (2, 1)],
    ids=["one-asked", "auto-one-thread", "two-asked-one-thread"],
)
def test_one_batch_at_a_time_runs_in_the_callers_thread(
    run, monkeypatch, inter_threads, torch_threads
):
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        recorder = Recorder(monkeypatch, concurrent=False)
        Translator.from_run(run).translate(LINES, batch_size=4, inter_threads=inter_threads)
    finally:
        torch.set_num_threads(before)
    assert {call for call in recorder.calls} == {(threading.get_ident(), torch_threads)}


def test_how_many_batches_at_once(run, two_threads):
    translator = Translator.from_run(run)

    def at_once(inter_threads: int, sentences: int) -> int:
        settings = translator.settings(inter_threads=inter_threads, batch_size=64)
        return translator.inter_threads(settings, sentences)

    assert at_once(0, 1000) == 2  # automatic
    assert at_once(4, 1000) == 2  # no more than PyTorch's threads
    assert at_once(0, 64) == 1  # one batch
    assert at_once(0, 96) == 2  # a batch and a half: worth a second thread
    assert at_once(0, 95) == 1  # a full batch and a small rest: faster on both threads
    torch.set_num_threads(4)  # automatic is 2 only where measured: 2 threads
    assert at_once(0, 1000) == 1
    assert at_once(2, 1000) == 2
    translator.device = torch.device("cuda")  # a GPU keeps one batch at a time
    assert at_once(2, 1000) == 1


def test_a_bf16_copy_and_a_lexicon_are_made_once_before_the_workers_start(
    run, two_threads, monkeypatch
):
    """Two workers starting together (the Recorder's barrier) would each make their own."""
    import nmt.translate

    made = {"copies": 0, "lexicons": 0}
    deepcopy, lexicon_for_run = nmt.translate.copy.deepcopy, nmt.translate.lexicon_for_run

    def counted_copy(value, *args):
        made["copies"] += isinstance(value, torch.nn.Module)
        return deepcopy(value, *args)

    def counted_lexicon(*args):
        made["lexicons"] += 1
        return lexicon_for_run(*args)

    monkeypatch.setattr(nmt.translate.copy, "deepcopy", counted_copy)
    monkeypatch.setattr(nmt.translate, "lexicon_for_run", counted_lexicon)
    Recorder(monkeypatch, concurrent=True)
    translator = Translator.from_run(run)
    translator.translate(LINES, batch_size=4, inter_threads=2, precision="bf16", shortlist=5)
    assert made == {"copies": 1, "lexicons": 1}


def test_while_another_caller_has_the_pool_a_search_runs_one_batch_at_a_time(
    run, two_threads, monkeypatch
):
    import nmt.translate

    recorder = Recorder(monkeypatch, concurrent=False)
    with nmt.translate._POOL:  # another caller's workers are searching
        Translator.from_run(run).translate(LINES, batch_size=4, inter_threads=2)
    assert set(recorder.calls) == {(threading.get_ident(), 2)}


def test_callers_in_two_threads_both_get_their_outputs(run, two_threads):
    """One pool at a time: a second caller meanwhile searches one batch at a time, and the
    thread count a later thread starts with is the default again once both are done."""
    translator = Translator.from_run(run)
    expected = [h.text for h in translator.translate(LINES, batch_size=4, inter_threads=1)]
    found: dict[int, list[str]] = {}

    def caller(k: int) -> None:
        found[k] = [h.text for h in translator.translate(LINES, batch_size=4, inter_threads=2)]

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    assert found == {0: expected, 1: expected}
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2]


@pytest.mark.parametrize("error", [NmtError, KeyboardInterrupt])
def test_a_failing_or_interrupted_search_ends_and_frees_the_pool(
    run, two_threads, monkeypatch, error
):
    """A batch's error ends the search once the batches running are done (no worker is left);
    Ctrl-C ends it at once. Either way the thread count and the pool are free again: the next
    search runs two batches at once (the barrier proves it)."""
    translator = Translator.from_run(run)
    threads_before = threading.active_count()
    Recorder(monkeypatch, concurrent=True, fail_at=3, error=error)
    with pytest.raises(error, match="batch failed"):
        translator.translate(LINES, batch_size=4, inter_threads=2)
    if error is NmtError:
        assert threading.active_count() == threads_before
    assert torch.get_num_threads() == 2
    recorder = Recorder(monkeypatch, concurrent=True)
    translator.translate(LINES, batch_size=4, inter_threads=2)
    assert len({ident for ident, _ in recorder.calls}) == 2


def test_the_memory_check_counts_every_batch_in_flight(run, two_threads, monkeypatch):
    """Two batches at once hold two batches' scores: a search that fits one at a time but not
    two is refused before it starts, with inter_threads 2 only."""
    import nmt.translate

    translator = Translator.from_run(run)
    one_batch = 4 * 4 * 3 * translator.tokenizer.target_vocab_size * 4  # as _check_memory counts
    monkeypatch.setattr(nmt.translate, "_device_memory", lambda device: one_batch + 1)
    translator.translate(LINES, batch_size=4, beam=3, inter_threads=1)
    with pytest.raises(NmtError, match="8 sentences"):
        translator.translate(LINES, batch_size=4, beam=3, inter_threads=2)


def test_boundaries_of_inter_threads(run, two_threads):
    """A negative value is refused by name; a huge one is capped by the threads; an empty or
    blank input searches nothing and starts no worker."""
    translator = Translator.from_run(run)
    with pytest.raises(NmtError, match="inter_threads"):
        translator.translate(LINES, inter_threads=-1)
    huge = translator.translate(LINES, batch_size=4, inter_threads=10**9)
    assert [h.text for h in huge] == [
        h.text for h in translator.translate(LINES, batch_size=4, inter_threads=1)
    ]
    threads_before = threading.active_count()
    assert translator.translate([], inter_threads=2) == []
    assert [h.text for h in translator.translate(["", " "], inter_threads=2)] == ["", ""]
    assert threading.active_count() == threads_before
