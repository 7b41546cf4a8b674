"""nmt-serve: the JSON API in-process (FastAPI's test client), batching across requests, the
real server under concurrent good and bad requests, and its shutdown."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import QUICKSTART, Server, trained_run  # noqa: E402
from nmt.cli import serve_main  # noqa: E402
from nmt.scoring.report import build_report  # noqa: E402
from nmt.search import length_penalty  # noqa: E402
from nmt.search.beam import prefixes  # noqa: E402
from nmt.serving.app import create_app, describe_runs  # noqa: E402
from nmt.serving.batcher import Batcher, Job  # noqa: E402
from nmt.serving.limits import Limits  # noqa: E402
from nmt.translate import Translator  # noqa: E402

SENTENCES = (QUICKSTART / "test.de").read_text(encoding="utf-8").splitlines()[:12]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def translator(run) -> Translator:
    return Translator.from_run(run)


@pytest.fixture
def client(run, translator):
    app = create_app(translator, describe_runs([run], "best"), Limits(max_sentences=16))
    with TestClient(app) as client:
        yield client


def post(client, body, path="/translate"):
    """POST a body as given: a str or bytes is sent as is (malformed JSON too)."""
    if isinstance(body, (str, bytes)):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


# ------------------------------------------------------------------ the endpoints


def test_translate_answers_what_the_translator_gives_in_input_order(client, translator):
    lines = [SENTENCES[3], "", SENTENCES[0], SENTENCES[7]]
    response = post(client, {"text": lines, "beam": 3, "nbest": 2, "length_norm": "avg"})
    assert response.status_code == 200
    answers = response.json()["translations"]
    expected = translator.nbest(lines, nbest=2, beam=3, length_norm="avg")
    assert len(answers) == len(lines)
    for answer, hyps in zip(answers, expected):
        assert answer["text"] == hyps[0].text
        assert answer["score"] == pytest.approx(hyps[0].score)
        assert [h["text"] for h in answer["nbest"]] == [h.text for h in hyps]
        for hyp in answer["nbest"]:  # raw and normalized scores, as the page shows them
            penalty = length_penalty(hyp["length"] + 1, "avg", translator.decode.alpha)
            assert hyp["score"] == pytest.approx(hyp["log_prob"] / penalty)
    assert answers[1] == {"text": "", "score": 0.0, "log_prob": 0.0, "length": 0, "nbest": [
        {"text": "", "score": 0.0, "log_prob": 0.0, "length": 0}] * 2}  # fmt: skip


def test_greedy_sampling_and_the_servers_defaults(client, translator):
    greedy = post(client, {"text": SENTENCES[:3], "beam": 1}).json()["translations"]
    assert [a["text"] for a in greedy] == [
        h.text for h in translator.translate(SENTENCES[:3], beam=1)
    ]
    body = {"text": SENTENCES[:2], "sample": True, "nbest": 3, "seed": 7, "temperature": 0.8}
    first, again = (post(client, body).json()["translations"] for _ in range(2))
    assert first == again and len(first[0]["nbest"]) == 3  # a seed gives the same samples
    sampled = translator.nbest(SENTENCES[:2], sample=True, nbest=3, seed=7, temperature=0.8)
    assert [[h["text"] for h in a["nbest"]] for a in first] == [
        [h.text for h in hyps] for hyps in sampled
    ]  # what the API samples with these options, not a beam search's n-best
    cooler = dict(body, temperature=0.3)
    assert [[h.log_prob for h in hyps] for hyps in sampled] != [
        [h["log_prob"] for h in a["nbest"]] for a in post(client, cooler).json()["translations"]
    ]  # the temperature reaches the search
    plain = post(client, {"text": SENTENCES[:2]}).json()["translations"]
    assert [a["text"] for a in plain] == [h.text for h in translator.translate(SENTENCES[:2])]


def test_attention_and_steps_of_a_sentence(client, translator):
    answer = post(client, {"text": [SENTENCES[2]], "beam": 3, "attention": True, "steps": True})
    result = answer.json()["translations"][0]
    record = result["attention"]
    weights = record["attention"]
    assert record["target"][-1] == "</s>" and record["source"][-1] == "</s>"
    assert len(weights) == len(record["target"]) == result["length"] + 1
    assert all(len(row) == len(record["source"]) for row in weights)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-2) for row in weights)
    steps, rebuilt = result["steps"], prefixes(result["steps"])
    for t, (step, tokens) in enumerate(zip(steps, rebuilt)):  # at the limit, every one ends
        assert (1 if t < len(steps) - 1 else 0) <= len(step["kept"]) <= 3
        assert all(len(ids) == t + 1 for ids in tokens["kept"])
        assert [h["piece"] for h in step["kept"]] == [
            translator.tokenizer.target_pieces([h["token"]])[0] for h in step["kept"]
        ]
        kept = [h["log_prob"] for h in step["kept"]]
        assert kept == sorted(kept, reverse=True)
    ended = [
        (h["score"], ids)
        for step, tokens in zip(steps, rebuilt)
        for h, ids in zip(step["finished"], tokens["finished"])
    ]
    best = max(ended)
    assert best[0] == pytest.approx(result["score"])
    assert translator.tokenizer.decode_target(best[1]) == result["text"]


def test_health_info_and_page(client, run):
    assert client.get("/health").json() == {"status": "ready", "pending": 0}
    info = client.get("/info").json()
    assert (info["source_language"], info["target_language"]) == ("de", "en")
    assert info["decode"]["beam"] == 3 and "batch_size" not in info["decode"]
    assert "inter_threads" not in info["decode"]  # the server's, as its batch size
    member = info["members"][0]
    rows = (run / "metrics.csv").read_text().splitlines()
    valid = [row.split(",") for row in rows if ",valid," in row]
    header = rows[0].split(",")
    at = {int(row[0]): dict(zip(header, row)) for row in valid}
    best = json.loads((run / "checkpoints" / "best.json").read_text())["progress"]
    assert member["step"] == best["step"] == member["best_step"] and member["step"] in at
    assert member["dev_bleu"] == float(at[member["step"]]["dev_bleu"]) == member["best_dev"]
    assert member["parameters"] > 1000
    assert info["limits"]["max_sentences"] == 16
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched


def test_score_reports_what_nmt_score_json_reports(client):
    hyps = ["a dog runs .", "two men sit ."]
    refs = ["a dog is running .", "two men are sitting ."]
    answer = post(client, {"hypotheses": hyps, "references": refs}, "/score")
    assert answer.status_code == 200
    assert answer.json() == json.loads(
        json.dumps(build_report({"hypotheses": hyps}, [refs], samples=0))
    )
    metrics = answer.json()["systems"]["hypotheses"]["metrics"]
    assert [m["name"] for m in metrics] == ["BLEU", "chrF", "TER"]
    assert metrics[0]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    upper = post(client, {"hypotheses": [h.upper() for h in hyps], "references": refs,
                          "lowercase": True, "tokenize": "none"}, "/score").json()  # fmt: skip
    lowercased = build_report({"hypotheses": hyps}, [refs], samples=0)["systems"]["hypotheses"]
    assert upper["systems"]["hypotheses"]["metrics"][0]["signature"].startswith(
        "nrefs:1|case:lc|eff:no|tok:none"
    )
    assert (
        upper["systems"]["hypotheses"]["metrics"][1]["score"] == lowercased["metrics"][1]["score"]
    )
    two = post(client, {"hypotheses": {"a": hyps, "b": refs}, "references": [refs, refs],
                        "samples": 50}, "/score")  # fmt: skip
    assert set(two.json()["systems"]) == {"a", "b"} and "comparison" in two.json()


# ------------------------------------------------------------------ every kind of bad request


BAD = [
    ('{"text": ["a"', 400, None),
    ("[1, 2]", 422, None),
    ('"text"', 422, None),
    ("", 422, None),
    (b"\xff\xfe\x00", 400, None),
    ({"beam": 3}, 422, "text"),
    ({"text": "Ein Hund."}, 422, "text"),
    ({"text": ["a", 5]}, 422, "text[1]"),
    ({"text": ["a"], "beam": "5"}, 422, "beam"),
    ({"text": ["a"], "beam": True}, 422, "beam"),
    ({"text": ["a"], "beam": 2.5}, 422, "beam"),
    ({"text": ["a"], "alpha": "high"}, 422, "alpha"),
    ({"text": ["a"], "attention": "yes"}, 422, "attention"),
    ({"text": ["a"], "bogus": 1}, 422, "bogus"),
    ({"text": ["a"], "batch_size": 8}, 422, "batch_size"),
    ({"text": ["a"], "inter_threads": 2}, 422, "inter_threads"),
    ({"text": ["a"], "beam": 0}, 422, "beam"),
    ({"text": ["a"], "beam": 1000}, 422, "beam"),
    ({"text": ["a"], "alpha": -1}, 422, "alpha"),
    ({"text": ["a"], "top_p": 2.0, "sample": True}, 422, "top_p"),
    ({"text": ["a"], "length_norm": "log"}, 422, "length_norm"),
    ({"text": ["a"], "stopping": "never"}, 422, "stopping"),
    ({"text": ["a"], "nbest": 0}, 422, "nbest"),
    ({"text": ["a"], "nbest": 4, "beam": 2}, 422, "nbest"),
    ({"text": ["a"], "temperature": 0.5}, 422, "temperature"),
    ({"text": ["a"], "beam": 1, "steps": True}, 422, "steps"),
    ({"text": ["a"], "sample": True, "steps": True}, 422, "steps"),
    ({"text": ["a"], "min_len": 500}, 422, "min_len"),
    ({"text": ["a"] * 17}, 422, "text"),
    ({"text": ["a", "b" * 1001]}, 422, "text[1]"),
    ({"text": ["a"], "max_len_a": 1e308, "max_len_b": 10**30}, 422, "max_len_a"),
    ({"text": ["a"], "max_len_b": 10**6}, 422, "max_len_b"),
    ({"text": ["a"], "max_len_b": 10**400}, 422, "max_len_b"),  # no float holds it
    ({"text": ["a"], "beam": 51}, 422, "beam"),
    ({"text": ["a"], "sample": True, "nbest": 51}, 422, "nbest"),
    (r'{"text": ["a", "\ud800 Hund"]}', 422, "text[1]"),  # a lone surrogate: not text
    ({"text": ["a", "b"], "beam": 3, "steps": True}, 422, "steps"),
    ({"text": ["a"], "shortlist": 5}, 422, "shortlist"),
    ({"text": ["a"] * 16, "beam": 50, "max_len_a": 0.0, "max_len_b": 400}, 422, "text"),
]


@pytest.mark.parametrize("body, status, field", BAD, ids=[str(b)[:40] for b, _, _ in BAD])
def test_a_bad_request_gets_a_4xx_naming_its_field(client, body, status, field):
    response = post(client, body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "field"} and answer["field"] == field
    assert answer["error"] and "\n" not in answer["error"]
    if field:
        assert answer["error"].startswith(field.split("[")[0]) or field in answer["error"]
    assert client.get("/health").json()["status"] == "ready"


def test_the_output_limit_is_checked_as_search_applies_it(client, translator):
    """max_len_a · |x| + max_len_b is floored to whole subwords by the search, so a request
    whose limit is 400.5 stops at 400 (the server's max_output) and is served."""
    length = len(translator.tokenizer.encode_source(["a"])[0])
    body = {"text": ["a"], "beam": 1, "max_len_a": 0.5 / length, "max_len_b": 400}
    assert post(client, body).status_code == 200
    refused = post(client, {"text": ["a"], "beam": 1, "max_len_b": 401})
    assert (refused.status_code, refused.json()["field"]) == (422, "max_len_b")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"hypotheses": ["a"], "references": ["a", "b"]}, "hypotheses"),
        ({"hypotheses": ["a"], "references": []}, None),
        ({"hypotheses": [1], "references": ["a"]}, "hypotheses[0]"),
        ({"hypotheses": ["a"], "references": ["a"], "worst": -1}, "worst"),
        ({"hypotheses": ["a"], "references": ["a"], "sources": ["x", "y"]}, "sources"),
        ({"hypotheses": ["a"], "references": ["a"], "lowercased": True}, "lowercased"),
        ({"hypotheses": ["a"], "references": ["a"], "tokenize": "spm"}, "tokenize"),
        (
            {"hypotheses": {"a": ["a"], "b": ["b"]}, "references": ["a"], "samples": 10**7},
            "samples",
        ),
        ({"hypotheses": ["a"], "references": ["a"], "samples": -1}, "samples"),
        ({"hypotheses": ["a"] * 10_001, "references": ["a"] * 10_001}, "hypotheses"),
        ({"hypotheses": ["a"], "references": ["b" * 2001]}, "references"),
        (
            {
                "hypotheses": {"a": ["a"] * 2000, "b": ["b"] * 2000},
                "references": ["a"] * 2000,
                "samples": 10_000,
            },
            "samples",
        ),  # fmt: skip
    ],
)
def test_a_bad_score_request_gets_a_422(client, body, field):
    response = post(client, body, "/score")
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_a_body_not_sent_as_json_gets_415(client):
    response = client.post("/translate", content=b'{"text": ["a"]}')  # no Content-Type
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    form = client.post("/translate", data={"text": "a"})
    assert form.status_code == 415
    for kind in ("application/json; charset=utf-8", "application/vnd.api+json"):
        answer = client.post(
            "/translate", content=b'{"text": ["a"]}', headers={"content-type": kind}
        )
        assert answer.status_code == 200, kind


def test_health_says_stopping_with_503(client):
    client.app.state.service.status = "stopping"  # as the shutdown sets it
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "stopping"
    client.app.state.service.status = "ready"


def test_a_server_with_a_shortlist_takes_shortlist_requests(run):
    import dataclasses

    shortlisting = Translator.from_run(run)
    shortlisting.decode = dataclasses.replace(shortlisting.decode, shortlist=5)
    assert not shortlisting.has_lexicon
    with TestClient(create_app(shortlisting)) as client:
        assert shortlisting.has_lexicon  # loaded before the first request
        answer = post(client, {"text": SENTENCES[:3], "shortlist": 3})
        assert answer.status_code == 200
        expected = shortlisting.translate(SENTENCES[:3], shortlist=3)
        assert [a["text"] for a in answer.json()["translations"]] == [h.text for h in expected]


def test_a_bug_is_a_json_500_and_the_server_goes_on(translator, monkeypatch):
    def broken(line, hyp):
        raise ValueError("planted")

    app = create_app(translator)
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(translator, "attention_record", broken)
        response = post(client, {"text": ["Ein Hund."], "attention": True})
        assert response.status_code == 500
        assert response.json()["error"].startswith("internal error (ValueError)")
        monkeypatch.undo()
        assert post(client, {"text": ["Ein Hund."]}).status_code == 200


def test_a_body_over_the_limit_is_refused_declared_or_streamed(run, translator):
    app = create_app(translator, None, Limits(max_body=1000))
    with TestClient(app) as client:
        big = json.dumps({"text": ["x" * 2000]})
        assert post(client, big).status_code == 413

        def chunks():  # no Content-Length: the limit is counted as the body arrives
            yield b'{"text": ["'
            for _ in range(100):
                yield b"x" * 100
            yield b'"]}'

        response = client.post("/translate", content=chunks())
        assert response.status_code == 413 and "1,000 bytes" in response.json()["error"]
        assert post(client, {"text": ["Ein Hund."]}).status_code == 200


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nowhere").json()["error"] == "Not Found"
    assert client.get("/translate").status_code == 405
    assert "error" in client.get("/translate").json()


def test_overload_is_refused_with_503_and_retry_after(run, translator):
    app = create_app(translator, None, Limits(max_pending=4))
    with TestClient(app) as client:
        response = post(client, {"text": SENTENCES[:5]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "at most 4" in response.json()["error"]
        assert post(client, {"text": SENTENCES[:4]}).status_code == 200
        assert client.get("/health").json() == {"status": "ready", "pending": 0}


# ------------------------------------------------------------------ batching across requests


def test_a_lone_request_goes_once_no_other_comes_for_2_ms(translator):
    """The README's "up to --batch-wait ms, less once no other comes for 2 ms": with a wait of
    a minute, a lone request is gathered alone well before the minute ends."""
    import threading

    batcher = Batcher(translator, max_wait=60.0)
    assert batcher.quiet == 0.002
    first = Job(SENTENCES[:1], translator.settings(), {})
    gathered = []
    worker = threading.Thread(target=lambda: gathered.append(batcher._gather(first)))
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive() and gathered == [([first], False)]


def test_requests_searched_together_get_what_they_get_alone(translator):
    """Jobs queued before the worker starts are gathered into one round: one search per group
    of equal settings, and every job's results equal its lines translated alone."""
    batcher = Batcher(translator, max_wait=0.0, batch_size=64)
    wanted = [
        (SENTENCES[0:3], {}),
        (SENTENCES[3:4], {"beam": 2}),
        (SENTENCES[4:9], {}),
        (["", SENTENCES[9]], {"beam": 2}),
        (SENTENCES[10:12], {}),
        (SENTENCES[0:2], {"sample": True, "seed": 3}),
        (SENTENCES[5:8], {"sample": True, "seed": 3}),
    ]
    jobs = [Job(lines, translator.settings(**options), options) for lines, options in wanted]
    futures = [batcher.submit(job) for job in jobs]
    assert batcher.pending == sum(max(len(lines), 1) for lines, _ in wanted)
    batcher.start()
    results = [future.result(timeout=60) for future in futures]
    batcher.stop()
    assert batcher.batches == 3  # defaults, beam 2, and the two sampling jobs
    assert batcher.pending == 0
    for (lines, options), found in zip(wanted, results):
        alone = translator.nbest(lines, **options)
        # the same words; scores to float rounding (a product's sums depend on the batch's rows)
        assert [[h.text for h in hyps] for hyps in found] == [
            [h.text for h in hyps] for hyps in alone
        ]
        assert [[h.score for h in hyps] for hyps in found] == [
            [pytest.approx(h.score, abs=1e-4) for h in hyps] for hyps in alone
        ]


def test_an_error_in_a_search_reaches_its_requests_and_the_worker_goes_on(translator):
    batcher = Batcher(translator, max_wait=0.0)
    broken = Job(["a"], translator.settings(), {"beam": "not a number"})
    fine = Job(["Ein Hund."], translator.settings(beam=2), {"beam": 2})
    futures = [batcher.submit(broken), batcher.submit(fine)]
    batcher.start()
    with pytest.raises(Exception, match="beam"):
        futures[0].result(timeout=60)
    assert (
        futures[1].result(timeout=60)[0][0].text
        == translator.translate(["Ein Hund."], beam=2)[0].text
    )
    batcher.stop()


def test_a_request_that_gave_up_is_skipped_and_the_worker_goes_on(translator):
    """A cancelled future (the client went away, or the server's shutdown timed out) must not
    kill the search loop: it is skipped, and its sentences no longer count as pending."""
    batcher = Batcher(translator, max_wait=0.0)
    gone = Job(SENTENCES[:2], translator.settings(), {})
    kept = Job(SENTENCES[2:3], translator.settings(), {})
    futures = [batcher.submit(gone), batcher.submit(kept)]
    assert futures[0].cancel()
    batcher.start()
    assert futures[1].result(timeout=60)[0][0].text == translator.translate(SENTENCES[2:3])[0].text
    later = batcher.submit(Job(SENTENCES[3:4], translator.settings(), {}))
    assert later.result(timeout=60)[0][0].text == translator.translate(SENTENCES[3:4])[0].text
    batcher.stop()
    assert batcher.pending == 0


def test_one_bad_sentence_fails_its_own_request_only(translator):
    """Jobs with equal settings are searched together; when that search fails, each is searched
    alone, so the request with the sentence SentencePiece refuses gets the error, not its
    neighbours."""
    batcher = Batcher(translator, max_wait=0.0)
    settings = translator.settings()
    bad = Job(["\ud800 Hund"], settings, {})
    good = [Job([line], settings, {}) for line in SENTENCES[:2]]
    futures = [batcher.submit(job) for job in (good[0], bad, good[1])]
    batcher.start()
    with pytest.raises(Exception):
        futures[1].result(timeout=60)
    for future, line in zip((futures[0], futures[2]), SENTENCES[:2]):
        assert future.result(timeout=60)[0][0].text == translator.translate([line])[0].text
    batcher.stop()
    assert batcher.pending == 0


def test_info_of_an_averaged_and_of_a_format_1_checkpoint(run, translator):
    import shutil

    assert serve_main_code(["-m", str(run)], average=True) == 0  # checkpoints/averaged
    averaged = describe_runs([run], "averaged")["members"][0]
    assert averaged["averaged_from"] and averaged["step"] is None and "dev_bleu" not in averaged
    expected = sum(p.numel() for p in translator.model.parameters())
    assert averaged["parameters"] == expected
    best = describe_runs([run], "best")["members"][0]
    assert best["parameters"] == expected  # model tensors only, not the optimizer's moments
    # A format-1 checkpoint: weights beside the JSON, under its name.
    old = run.parent / "old"
    shutil.copytree(run, old)
    meta_path = old / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    (old / "checkpoints" / meta.pop("weights_file")).rename(
        old / "checkpoints" / "best.safetensors"
    )
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    assert describe_runs([old], "best")["members"][0]["parameters"] == expected


@pytest.mark.parametrize(
    "ties", [["model.tie_output=true"], ["model.tie_output=true", "model.tie_embeddings=true"]]
)
def test_info_counts_tied_weights_once(tmp_path, ties):
    """A checkpoint stores a tied output layer beside the target embeddings it shares, and
    tied embeddings under both languages' names."""
    from conftest import TINY_RECIPE, write_slice
    from nmt.recipe import Recipe
    from nmt.training import train

    write_slice(tmp_path / "corpus")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    tied = ["train.max_steps=1", "model.decoder_hidden_size=16", *ties]
    train(Recipe.load(tmp_path / "tiny.yaml", tied), tmp_path / "run")
    model = Translator.from_run(tmp_path / "run").model
    assert model.output.weight is model.target_embedding.weight
    member = describe_runs([tmp_path / "run"], "best")["members"][0]
    assert member["parameters"] == model.parameter_count


def serve_main_code(argv: list[str], average: bool = False) -> int:
    from nmt.cli import average_main

    with pytest.raises(SystemExit) as code:
        (average_main if average else serve_main)(argv)
    return code.value.code


def test_defaults_over_the_limits_refuse_to_start_naming_the_flags(run, translator):
    import dataclasses

    from nmt.errors import NmtError

    generous = Translator(translator.model, translator.tokenizer, dataclasses.replace(
        translator.decode, max_len_b=1000), max_source_tokens=100)  # fmt: skip
    with pytest.raises(NmtError, match="--max-output") as refused:
        create_app(generous)
    assert "--max-len-b" in str(refused.value)


# ------------------------------------------------------------------ the real server


def test_soak_concurrent_good_and_bad_requests(run, translator):
    """A few seconds of concurrent clients, good requests and bad ones mixed: every good one
    gets its own right answer, every bad one its 4xx, and the server still answers."""
    server = Server(run, "--max-sentences", "8", "--max-body", "20000")
    expected = {line: hyps[0].text for line, hyps in zip(SENTENCES, translator.nbest(SENTENCES))}
    bad = [
        (b'{"text": [', 400),
        (json.dumps({"text": ["a"], "beam": -1}).encode(), 422),
        (json.dumps({"text": ["a"] * 9}).encode(), 422),
        (json.dumps({"text": ["x" * 30000]}).encode(), 413),
        (b"\x00\x01binary", 400),
    ]
    failures: list[str] = []
    counts = {"good": 0, "bad": 0}
    lock = threading.Lock()

    def client(number: int) -> None:
        deadline = time.monotonic() + 3.0
        i = number
        while time.monotonic() < deadline:
            i += 1
            if i % 3 == 0:
                raw, status = bad[i % len(bad)]
                got, _ = server.request("POST", "/translate", raw=raw)
                ok, kind = got == status, "bad"
            else:
                lines = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4)]
                got, answer = server.request("POST", "/translate", {"text": lines})
                ok = got == 200 and [a["text"] for a in answer["translations"]] == [
                    expected[line] for line in lines
                ]
                kind = "good"
            with lock:
                counts[kind] += 1
                if not ok:
                    failures.append(f"client {number}, request {i}: {got}")

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        assert not failures, failures[:5]
        assert counts["good"] > 20 and counts["bad"] > 10
        assert server.request("GET", "/health") == (200, {"status": "ready", "pending": 0})
    finally:
        code = server.stop()
    assert code == 0, "".join(server.log)


def test_the_servers_flags_are_its_requests_defaults_on_a_local_address(run, translator):
    """nmt-serve's decoding flags become what a request that does not say gets (here a length
    limit of 2 subwords and greedy search); it listens on 127.0.0.1 unless --host says so."""
    server = Server(run, "--beam", "1", "--max-len-a", "0", "--max-len-b", "2")
    try:
        assert any("serving on http://127.0.0.1:" in line for line in server.log)
        assert not any("reachable from other machines" in line for line in server.log)
        status, answer = server.request("POST", "/translate", {"text": SENTENCES[:4]})
        assert status == 200
        expected = translator.translate(SENTENCES[:4], beam=1, max_len_a=0, max_len_b=2)
        assert [a["text"] for a in answer["translations"]] == [h.text for h in expected]
        assert expected != translator.translate(SENTENCES[:4])  # the flags made a difference
        decode = server.request("GET", "/info")[1]["decode"]
        assert (decode["beam"], decode["max_len_a"], decode["max_len_b"]) == (1, 0, 2)
    finally:
        assert server.stop() == 0, "".join(server.log)
    server = Server(run, "--host", "0.0.0.0")
    try:
        assert any("serving on http://0.0.0.0:" in line for line in server.log)
        assert any("reachable from other machines" in line for line in server.log)
    finally:
        assert server.stop() == 0, "".join(server.log)


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=30).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_refuses_new_connections_and_answers_those_in_flight(run, translator, sig):
    """A request whose body has not arrived when the signal comes is surely in flight (the
    server has said `100 Continue`: it waits for that body). From the signal on, new
    connections, a health check's too, are refused; the request is answered in full once its
    body comes; then the server exits 0."""
    server = Server(run)
    body = json.dumps({"text": SENTENCES[:3]}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    answered = False
    try:
        head = (
            "POST /translate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        said = b""
        while not said.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            assert byte, f"the server closed the connection after {said!r}"
            said += byte
        assert said.startswith(b"HTTP/1.1 100"), said
        server.process.send_signal(sig)
        deadline = time.monotonic() + 30
        while not connection_refused(server.port):  # uvicorn checks its exit flag every 0.1 s
            assert time.monotonic() < deadline, "the server still takes connections"
            time.sleep(0.02)  # a poll interval: no test outcome depends on it
        sock.sendall(body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        answer = json.loads(response.read())
        answered = True
    finally:
        sock.close()
        if not answered:  # a failed check: no server left running
            server.process.kill()
        code = server.stop(0)  # it exits by itself once the request is answered
    assert code == 0, "".join(server.log)
    assert [a["text"] for a in answer["translations"]] == [
        h.text for h in translator.translate(SENTENCES[:3])
    ]


# In the server's process: the search of beam 10 waits until the second signal has been
# handled (or 20 s have passed), however fast the CPU, so the signals land inside it.
HOLD_BEAM_10_UNTIL_THE_SECOND_SIGNAL = """\
import threading, time, nmt.serving.batcher as batcher, nmt.translate as translate
second_signal, stop, nbest = threading.Event(), batcher.Batcher.stop, translate.Translator.nbest
def stopping(self, now=False):
    if now:
        second_signal.set()
    stop(self, now)
def held(self, lines, **options):
    deadline = time.monotonic() + 20
    while options.get("beam") == 10 and time.monotonic() < deadline:
        if second_signal.wait(0.01):  # polled: the signal handlers run between the waits
            break
    return nbest(self, lines, **options)
batcher.Batcher.stop, translate.Translator.nbest = stopping, held
"""


def test_a_second_signal_stops_at_once_answering_nothing_more(run):
    """The first signal waits for requests in flight; a second one ends the server without
    searching what is queued, and without tracebacks from answers nobody can take. A request
    gets the whole answer of the search under way, or none: its connection closes, or, if the
    HTTP server gets to send it first, uvicorn's plain-text 500. The first request's search is
    held until the second signal is handled, so both signals land while it is under way; the
    second request, with another beam and so another search, waits behind it: after the first
    signal alone it would be answered, after the second it must not be. The second signal is
    sent once the first has been acted on (the port refuses connections): two signals of one
    kind sent at once can reach the process as one."""
    server = Server(run, "--batch-wait", "3000", prelude=HOLD_BEAM_10_UNTIL_THE_SECOND_SIGNAL)
    answers: dict[str, object] = {}

    def send(name: str, request: dict) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            connection.request(
                "POST", "/translate", json.dumps(request), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            answers[name] = (response.status, response.read())
        except (OSError, http.client.HTTPException):
            answers[name] = "closed"

    requests = {"held": {"text": SENTENCES, "beam": 10}, "queued": {"text": SENTENCES, "beam": 3}}
    senders = [threading.Thread(target=send, args=item, daemon=True) for item in requests.items()]
    deadline = time.monotonic() + 60
    for sender, waiting in zip(senders, (len(SENTENCES), 2 * len(SENTENCES))):
        sender.start()
        while server.request("GET", "/health")[1]["pending"] < waiting:
            assert time.monotonic() < deadline, "the requests never reached the batcher"
    server.process.send_signal(signal.SIGINT)
    while not connection_refused(server.port):
        assert time.monotonic() < deadline, "the server still takes connections"
        time.sleep(0.02)  # a poll interval: no test outcome depends on it
    code = server.stop(signal.SIGINT)
    log = "".join(server.log)
    assert code == 0, log
    assert "Traceback" not in log and "exception calling callback" not in log, log
    for sender in senders:
        sender.join(timeout=60)
    unanswered = ("closed", (500, b"Internal Server Error"))
    assert answers["queued"] in unanswered, answers["queued"]
    if answers["held"] not in unanswered:  # the search under way may answer, whole
        status, body = answers["held"]
        assert status == 200 and len(json.loads(body)["translations"]) == len(SENTENCES)


def test_nmt_serve_refuses_bad_arguments_in_one_line(run, tmp_path, capsys):
    cases = [
        (["-m", str(tmp_path / "nowhere")], "nowhere"),
        (["-m", str(run), "--port", "70000"], "--port 70000"),
        (["-m", str(run), "--max-sentences", "0"], "--max-sentences 0"),
        (["-m", str(run), "--max-connections", "0"], "--max-connections 0"),
        (["-m", str(run), "--max-work", "-5"], "--max-work -5"),
        (["-m", str(run), "--batch-wait", "-1"], "--batch-wait"),
        (["-m", str(run), "--beam", "0"], "--beam"),
        (["-m", str(run), "--host", "256.1.1.1", "--port", "0"], "--host 256.1.1.1"),
    ]
    for argv, named in cases:
        with pytest.raises(SystemExit) as code:
            serve_main(argv)
        err = capsys.readouterr().err
        assert code.value.code == 2 and named in err, (argv, err)
        assert err.startswith("nmt-serve: error: ") and err.count("\n") == 1


def test_connections_to_the_servers_socket_have_nagles_algorithm_off():
    """asyncio sets TCP_NODELAY only on sockets that name IPPROTO_TCP; without it, every answer
    (headers and body written apart) waited for the client's delayed ACK, 40 ms."""
    import asyncio
    import socket

    from nmt.serving.app import listen

    async def accept_one() -> int:
        seen = []

        async def handle(reader, writer):
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listen("127.0.0.1", 0))
        host, port = server.sockets[0].getsockname()[:2]
        reader, writer = await asyncio.open_connection(host, port)
        await reader.read()
        writer.close()
        server.close()
        return seen[0]

    assert asyncio.run(accept_one()) == 1


def test_a_port_in_use_is_one_line(run, capsys):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    with pytest.raises(SystemExit) as code:
        serve_main(["-m", str(run), "--port", str(taken.getsockname()[1])])
    taken.close()
    err = capsys.readouterr().err
    assert code.value.code == 2 and "cannot listen there" in err and err.count("\n") == 1


def test_without_the_web_stack_help_works_and_serving_says_what_to_install(run):
    """fastapi and uvicorn are an extra: `--help` needs neither, serving names the install."""
    blocked = "import sys; sys.modules['fastapi'] = sys.modules['uvicorn'] = None; "
    command = "from nmt.cli import serve_main; serve_main()"
    helped = subprocess.run(
        [sys.executable, "-c", blocked + command, "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--max-sentences" in helped.stdout
    refused = subprocess.run(
        [sys.executable, "-c", blocked + command, "-m", str(run)], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("nmt-serve: error: nmt-serve needs its web stack")
    assert "pip install 'nmt[serve]'" in refused.stderr and refused.stderr.count("\n") == 1


def test_a_bf16_request_searches_the_bfloat16_copy(client, translator):
    answer = post(client, {"text": SENTENCES[:1], "precision": "bf16", "beam": 3})
    assert answer.status_code == 200
    expected = translator.nbest(SENTENCES[:1], beam=3, precision="bf16")[0][0]
    assert answer.json()["translations"][0]["score"] == pytest.approx(expected.score)
    assert post(client, {"text": ["a"], "precision": "fp16"}).json()["field"] == "precision"


def test_requests_beyond_max_connections_get_a_plain_503(run):
    """`--max-connections N`: with N connections open (the new one counted), a request gets the
    HTTP server's own plain-text 503, no Retry-After, as the README says; once one closes, the
    next request is served."""
    import http.client
    import socket

    server = Server(run, "--max-connections", "2")
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # served; kept alive
        assert b"200" in idle.recv(4096).split(b"\r\n")[0]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/translate", json.dumps({"text": ["Hallo"]}).encode())
        refused = connection.getresponse()
        assert refused.status == 503 and refused.read() == b"Service Unavailable"
        assert refused.getheader("Retry-After") is None
        connection.close()
        idle.close()
        status, answer = server.request("POST", "/translate", {"text": ["Hallo"]})
        assert status == 200 and len(answer["translations"]) == 1
    finally:
        assert server.stop() == 0


def test_an_ensemble_is_served_as_nmt_translate_searches_it(run, tmp_path):
    """nmt-serve -m A -m B: answers are the ensemble's, and /info lists both members."""
    import shutil

    from nmt.recipe import Recipe
    from nmt.training import train

    other = tmp_path / "other"
    shutil.copytree(run, other)  # the same SentencePiece model, weights trained further
    recipe = Recipe.load(run.parent / "tiny.yaml", ["train.max_steps=4", "train.valid_every=2"])
    train(recipe, other, resume=True)
    server = Server(run, "-m", str(other), "--checkpoint", "last")  # steps 2 and 4
    try:
        status, answer = server.request("POST", "/translate", {"text": SENTENCES[:4]})
        info = server.request("GET", "/info")[1]
    finally:
        assert server.stop() == 0, "".join(server.log)
    assert status == 200
    ensemble = Translator.from_runs([run, other], "last").translate(SENTENCES[:4])
    alone = Translator.from_run(run, "last").translate(SENTENCES[:4])
    assert [a["text"] for a in answer["translations"]] == [h.text for h in ensemble]
    assert [a["score"] for a in answer["translations"]] == pytest.approx(
        [h.score for h in ensemble], abs=1e-4
    )
    assert [h.score for h in ensemble] != pytest.approx([h.score for h in alone], abs=1e-4)
    assert info["runs"] == [str(run), str(other)] and len(info["members"]) == 2
