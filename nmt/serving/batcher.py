"""Batching across requests: sentences of concurrent requests are searched together.

Requests arrive one by one on the web server's event loop; searching each alone would waste
most of a batched beam search. A single worker thread takes the first waiting request, waits
at most `max_wait` seconds for others (less once a batch is full), and hands the sentences of
all requests with the same settings to `Translator.nbest` at once, which sorts them by length
into batches as nmt-translate does. Each request gets its own sentences' results back.

A request's output does not depend on the requests it was batched with: batched beam search
gives what batch size 1 gives (`Translator.self_check`), and a sampled line's draws are seeded
by its request's seed and its number within the request. The exception is a vocabulary
shortlist, which is made for a whole batch: with one, an output can change with the other
sentences of its batch, as it can with nmt-translate's batch size.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Hashable

from nmt.recipe import DecodeConfig
from nmt.search import Hypothesis
from nmt.translate import Translator

log = logging.getLogger("nmt")


class Overloaded(Exception):
    """More sentences are waiting than the server keeps (`max_pending`): answer 503."""


@dataclass
class Job:
    """One request's sentences, how to search them, and where its answer goes."""

    lines: list[str]
    settings: DecodeConfig  # what the options make of the server's defaults, for grouping
    options: dict  # the request's decode options, as `Translator.nbest` takes them
    nbest: int = 1
    keep_attention: bool = False
    keep_steps: bool = False
    future: Future = field(default_factory=Future)

    def group(self) -> Hashable:
        """Jobs of one group are searched together (sampling ones too: a line's samples are
        seeded by its number in its own request, so its neighbours do not change them)."""
        return (self.settings, self.nbest, self.keep_attention, self.keep_steps)


class Batcher:
    """A worker thread that searches the sentences of waiting requests together.

    `submit` is called from any thread and returns a Future of the request's n-best lists
    (input order); `run` (or `start`, in a new thread) searches; `stop` lets the worker finish
    what is queued, then ends it.
    """

    def __init__(
        self,
        translator: Translator,
        max_wait: float = 0.005,
        batch_size: int | None = None,
        max_pending: int = 1024,
        quiet: float = 0.002,
    ):
        self.translator = translator
        self.max_wait = max_wait
        self.quiet = min(quiet, max_wait)
        self.batch_size = batch_size or translator.decode.batch_size
        self.max_pending = max_pending
        self.pending = 0  # sentences submitted and not yet answered
        self.batches = 0  # searches run (groups of jobs), for /health and the tests
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._abandon = False  # `stop(now=True)`: answer nothing more

    def start(self) -> None:
        """Search in a thread of its own (see `run` for the faster way, in the main thread)."""
        self._thread = threading.Thread(target=self.run, name="nmt-batcher", daemon=True)
        self._thread.start()

    def stop(self, now: bool = False) -> None:
        """End the worker (`run` returns): after answering every job already submitted, or
        with `now`, after the search under way, leaving the rest unanswered (the process is
        about to exit: nobody is left to answer)."""
        self._abandon = self._abandon or now
        self._queue.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def abandoned(self) -> bool:
        """`stop(now=True)` was asked: jobs left in the queue will not be answered."""
        return self._abandon

    def submit(self, job: Job) -> Future:
        size = max(len(job.lines), 1)
        with self._lock:
            if self.pending + size > self.max_pending:
                raise Overloaded(
                    f"{self.pending} sentences are waiting (the server keeps at most "
                    f"{self.max_pending}); retry shortly"
                )
            self.pending += size
        self._queue.put(job)
        return job.future

    def run(self) -> None:
        """The worker's loop, until `stop`. Run it in the thread that loaded the model where you
        can: PyTorch's CPU threads (OpenMP) belong to the thread that first used them, and a
        second thread doing the math gets a second team that is about half as fast (a beam-5
        Multi30k sentence: 21 ms against 44 ms on 2 cores), which is why nmt-serve searches in
        its main thread and serves HTTP from another."""
        while not self._abandon:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping = self._gather(first)
            groups: dict[Hashable, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group(), []).append(job)
            for group in groups.values():
                try:
                    self._search(group)
                except Exception as error:  # a bug: its requests get it, the server goes on
                    log.exception("nmt-serve: a search failed")
                    for job in group:
                        if job.future.running():
                            self._answer(job, error=error)
            if stopping:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """The first job and those that keep arriving after it: until none has come for
        `quiet` seconds, `max_wait` has passed since the first, or a batch is full. True when
        `stop` was asked meanwhile. Waiting while requests still trickle in (the event loop
        hands them over one by one) makes full batches of what a fixed wait would cut in two."""
        jobs, sentences = [first], len(first.lines)
        deadline = time.monotonic() + self.max_wait
        while sentences < self.batch_size:
            wait = min(deadline - time.monotonic(), self.quiet)
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get(False)
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            sentences += len(job.lines)
        return jobs, False

    def _search(self, jobs: list[Job]) -> None:
        """One search over the lines of jobs that share their settings; each job's future gets
        its own lines' results. Jobs whose requests gave up (a cancelled future) are skipped.
        If the search fails, each job is searched alone, so that one request's bad input fails
        that request only."""
        jobs = [job for job in jobs if self._claim(job)]
        if not jobs or self._abandon:
            return
        try:
            found = self._nbest(jobs)
        except Exception as error:
            if len(jobs) == 1:
                self._answer(jobs[0], error=error)
                return
            for job in jobs:  # find the culprit: each alone
                if self._abandon:
                    return
                try:
                    self._answer(job, self._nbest([job]))
                except Exception as alone:
                    self._answer(job, error=alone)
        else:
            start = 0
            for job in jobs:
                self._answer(job, found[start : start + len(job.lines)])
                start += len(job.lines)
        self.batches += 1

    def _nbest(self, jobs: list[Job]) -> list[list[Hypothesis]]:
        first = jobs[0]
        return self.translator.nbest(
            [line for job in jobs for line in job.lines],
            nbest=first.nbest,
            line_numbers=[number for job in jobs for number in range(len(job.lines))],
            keep_attention=first.keep_attention,
            keep_steps=first.keep_steps,
            **first.options,
        )

    def _claim(self, job: Job) -> bool:
        """Mark a job's future running (it can no longer be cancelled); False, and the job
        forgotten, when its request has already given up on it."""
        if job.future.set_running_or_notify_cancel():
            return True
        self._release(job)
        return False

    def _release(self, job: Job) -> None:
        with self._lock:
            self.pending -= max(len(job.lines), 1)

    def _answer(
        self,
        job: Job,
        result: list[list[Hypothesis]] | None = None,
        error: Exception | None = None,
    ) -> None:
        self._release(job)
        if self._abandon:  # the event loop that would take the answer is gone
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
