"""nmt-serve's web application: a JSON API over a Translator, and the teaching page at `/`.

FastAPI validates request bodies (types, unknown fields, choices) from schemas generated out of
the recipe's DecodeConfig, so every decoding option of `Translator.nbest` is an optional field
of POST /translate; ranges and combinations are then checked by `Translator.settings`, as for
recipe values and nmt-translate's flags. Every mistake gets a 4xx whose JSON body names the
field: `{"error": "beam: must be at least 1, not 0", "field": "beam"}`.

`create_app` is usable on its own (any ASGI server); `serve` runs it with uvicorn until SIGINT
or SIGTERM, letting requests in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import email.message
import logging
import math
import re
import signal
import socket
import threading
from importlib import resources
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Literal, Union, cast, get_type_hints

import torch
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, create_model
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nmt import __version__
from nmt.run_dir import CHECKPOINTS, METRICS, RECIPE
from nmt.checkpoint import read_meta, weights_path
from nmt.errors import NmtError
from nmt.model.seq2seq import tied_keys
from nmt.recipe import DecodeConfig, Recipe, field_summary, recipe_fields
from nmt.scoring.metrics import ScoreOptions
from nmt.scoring.report import build_report
from nmt.search import Hypothesis
from nmt.serving.batcher import Batcher, Job, Overloaded
from nmt.serving.limits import DEFAULT_LIMITS, Limits
from nmt.translate import Translator, length_limits

log = logging.getLogger("nmt")

SERVER_OPTIONS = ("batch_size", "inter_threads")  # decode keys the server sets, not a request


def _decode_fields() -> dict[str, Any]:
    """Each DecodeConfig key as an optional, strictly typed field (None: the server's default);
    choices are checked here, ranges by `Translator.settings` with the recipe's messages."""
    hints = get_type_hints(DecodeConfig)
    fields: dict[str, Any] = {}
    for f in recipe_fields(DecodeConfig):
        if f.name in SERVER_OPTIONS:
            continue
        kind, choices = hints[f.name], f.metadata.get("choices")
        annotation: Any = {bool: StrictBool, int: StrictInt, float: float, str: str}[kind]
        if choices:
            annotation = Literal[choices]  # type: ignore[valid-type]
        fields[f.name] = (Union[annotation, None], Field(None, description=field_summary(f)))
    return fields


STRICT = ConfigDict(extra="forbid", strict=True)
MAX_SAMPLES = 10_000  # bootstrap samples of /score: sacreBLEU holds samples × sentences ints
MAX_SAMPLED_LINES = 10_000_000  # samples × lines of a /score request
MAX_SCORE_LINES = 10_000  # lines per system or reference of a /score request
MAX_SCORE_CHARS = 2_000  # characters per line (TER is quadratic in pure Python)

TranslateRequest = create_model(  # type: ignore[call-overload]
    "TranslateRequest",
    __config__=STRICT,
    text=(list[str], Field(description="Sentences to translate, plain text.")),
    nbest=(StrictInt, Field(1, description="Translations per sentence, best first.")),
    attention=(StrictBool, Field(False, description="Give each best output's attention.")),
    steps=(StrictBool, Field(False, description="Give the beam after each search step.")),
    **_decode_fields(),
)


class ScoreRequest(BaseModel):
    """Hypotheses (one system, or several by name) against one or more reference sets."""

    model_config = STRICT
    hypotheses: Union[list[str], dict[str, list[str]]]
    references: Union[list[str], list[list[str]]]
    sources: Union[list[str], None] = None
    samples: StrictInt = Field(
        0, ge=0, le=MAX_SAMPLES, description="Paired bootstrap samples (several systems)."
    )
    worst: StrictInt = Field(5, ge=0, le=100, description="Lowest-chrF sentences per system.")
    lowercase: StrictBool = Field(False, description="Compare lowercased text (BLEU, chrF).")
    tokenize: Union[str, None] = Field(None, description="BLEU's tokenization (sacreBLEU's).")


class _Refused(Exception):
    """A request the server will not do: HTTP status, message, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class _Service:
    """What the routes share: the model, its batcher, the limits, and whether it is ready."""

    translator: Translator
    batcher: Batcher
    limits: Limits
    info: dict
    status: str = "starting"


OPTIONS = set(TranslateRequest.model_fields) - {"text"}  # the fields that set the search
DECODE_OPTIONS = OPTIONS - {"nbest", "attention", "steps"}
LABELS = {**{key: key for key in OPTIONS}, "keep_steps": "steps"}  # errors name JSON fields

routes = APIRouter()
_SCORING = threading.Lock()  # /score's sacreBLEU work takes CPU from the search: one at a time


def create_app(
    translator: Translator,
    info: dict | None = None,
    limits: Limits = DEFAULT_LIMITS,
    search_thread: bool = True,
) -> FastAPI:
    """The application: GET / (the page), /health, /info; POST /translate, /score. `info`
    (see `describe_runs`) is what /info says about the model. The search runs in a thread the
    application starts, or with `search_thread=False` wherever the caller runs
    `app.state.service.batcher.run()` (as `serve` does, in the main thread)."""
    try:  # the server's own defaults must be a request it would take
        _check_work(translator.decode, 1, {}, translator, limits)
    except _Refused as problem:
        raise NmtError(
            f"the decoding defaults: {problem.message}; lower them (--beam, --max-len-a, "
            f"--max-len-b) or raise the limits (--max-beam, --max-output, --max-work)"
        ) from None
    if translator.decode.shortlist:  # loaded (or built) now, not in the first request's search
        translator.lexicon  # noqa: B018 (a property that loads)
    translator.searched_model(translator.decode)  # the bf16 copy too, for `--precision bf16`
    batcher = Batcher(translator, limits.max_wait, max_pending=limits.max_pending)
    service = _Service(translator, batcher, limits, info or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if search_thread:
            batcher.start()
        service.status = "ready"
        yield
        service.status = "stopping"
        await asyncio.to_thread(batcher.stop)  # answers what is queued first

    app = FastAPI(
        title="nmt-serve",
        version=__version__,
        docs_url=None,  # FastAPI's docs pages fetch scripts from a CDN; /openapi.json stays
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(routes)
    app.add_middleware(_BodyLimit, limit=limits.max_body)
    app.add_exception_handler(_Refused, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _failed)
    return app


def _service(request: Request) -> _Service:
    return request.app.state.service


async def _refused(request: Request, error: _Refused) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    body = {"error": error.message, "field": error.field}
    return JSONResponse(body, status_code=error.status, headers=headers)


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    kind = request.headers.get("content-type", "")
    if request.method == "POST" and not _is_json(kind):
        message = f"send the body as JSON, with Content-Type: application/json (not {kind!r})"
        return await _refused(request, _Refused(415, message))
    return await _refused(request, _invalid_body(error))


def _is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON: application/json or
    application/*+json, parameters (charset) allowed, case as the header gives it."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return (
        bool(content_type)
        and message.get_content_maintype() == "application"
        and (subtype == "json" or subtype.endswith("+json"))
    )


async def _failed(request: Request, error: Exception) -> JSONResponse:
    """A bug, not the request's fault: JSON like every other answer (uvicorn logs the trace)."""
    body = {
        "error": f"internal error ({type(error).__name__}); the server's log has it",
        "field": None,
    }
    return JSONResponse(body, status_code=500)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    body = {"error": str(error.detail), "field": None}
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


@routes.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@routes.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the model is loaded and requests are taken, 503 once shutting down."""
    service = _service(request)
    body = {"status": service.status, "pending": service.batcher.pending}
    return JSONResponse(body, status_code=200 if service.status == "ready" else 503)


@routes.get("/info")
async def info(request: Request) -> dict:
    service = _service(request)
    decode = {
        f.name: getattr(service.translator.decode, f.name)
        for f in recipe_fields(DecodeConfig)
        if f.name not in SERVER_OPTIONS
    }
    return {**service.info, "decode": decode, "limits": asdict(service.limits)}


@routes.post("/translate")
async def translate(request: Request, body: TranslateRequest) -> dict:  # type: ignore[valid-type]
    """Translations of `text` in input order; options unset keep the server's defaults."""
    service, given = _service(request), cast(Any, body)
    translator = service.translator
    _check_text(given.text, service.limits)
    options = {k: v for k, v in given.model_dump(include=DECODE_OPTIONS).items() if v is not None}
    try:
        settings = translator.settings(given.nbest, LABELS, keep_steps=given.steps, **options)
    except NmtError as error:
        raise _from_nmt_error(error, OPTIONS) from None
    _check_work(settings, given.nbest, options, translator, service.limits, given.text)
    if given.steps and len(given.text) != 1:
        raise _Refused(
            422, "steps: records the search of one sentence; send text with one", "steps"
        )
    if settings.shortlist and not translator.has_lexicon:
        raise _Refused(
            422,
            "shortlist: this server has no lexicon loaded; start it with --shortlist N",
            "shortlist",
        )
    job = Job(given.text, settings, options, given.nbest, given.attention, given.steps)
    try:
        found = await asyncio.wrap_future(service.batcher.submit(job))
    except Overloaded as error:
        raise _Refused(503, str(error)) from None
    except NmtError as error:  # refused once searched, e.g. too little memory
        raise _from_nmt_error(error, OPTIONS) from None
    return {
        "translations": [
            _answer(translator, line, hyps, given.nbest, given.attention, given.steps)
            for line, hyps in zip(given.text, found)
        ]
    }


@routes.post("/score")
def score(body: ScoreRequest) -> dict:  # a plain def: sacreBLEU's work runs in the thread pool
    """BLEU, chrF and TER with signatures, as `nmt-score --json` reports them."""
    systems = body.hypotheses
    if isinstance(systems, list):
        systems = {"hypotheses": systems}
    references = body.references
    if references and isinstance(references[0], str):
        references = [references]  # type: ignore[list-item]
    _check_score(systems, references, body)  # type: ignore[arg-type]
    try:
        options = ScoreOptions(body.lowercase, body.tokenize)  # refused before waiting
        with _SCORING:  # one report at a time: the rest wait in the thread pool
            return build_report(
                systems,
                references,  # type: ignore[arg-type]
                body.sources,
                samples=body.samples,
                worst=body.worst,
                options=options,
            )
    except NmtError as error:
        raise _from_nmt_error(error, set(ScoreRequest.model_fields)) from None


def _check_score(systems: dict, references: list[list[str]], body: ScoreRequest) -> None:
    """Bound what a report costs: lines and their length, as for /translate's sentences, and
    the paired bootstrap, which holds samples × lines numbers per system."""
    named = [("hypotheses", lines) for lines in systems.values()]
    named += [("references", lines) for lines in references]
    named += [("sources", body.sources or [])]
    for field, lines in named:
        if len(lines) > MAX_SCORE_LINES:
            raise _Refused(
                422, f"{field}: {len(lines):,} lines; send at most {MAX_SCORE_LINES:,}", field
            )
        for i, line in enumerate(lines):
            if len(line) > MAX_SCORE_CHARS:
                message = f"{field}: line {i + 1} has {len(line):,} characters (at most "
                raise _Refused(422, message + f"{MAX_SCORE_CHARS:,})", field)
    lines = max((len(lines) for _, lines in named), default=0)
    if body.samples * lines > MAX_SAMPLED_LINES:
        raise _Refused(
            422,
            f"samples: {body.samples:,} samples of {lines:,} lines is over "
            f"{MAX_SAMPLED_LINES:,}; use fewer samples",
            "samples",
        )


def _check_text(lines: list[str], limits: Limits) -> None:
    if len(lines) > limits.max_sentences:
        raise _Refused(
            422,
            f"text: {len(lines)} sentences; send at most {limits.max_sentences} per request",
            "text",
        )
    for i, line in enumerate(lines):
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as error:  # JSON can carry lone surrogates ("\ud800")
            raise _Refused(
                422, f"text[{i}]: not valid Unicode text at character {error.start}", f"text[{i}]"
            ) from None
        if len(line) > limits.max_chars:
            raise _Refused(
                422,
                f"text[{i}]: {len(line)} characters; a sentence may have at most "
                f"{limits.max_chars} (split longer text into sentences)",
                f"text[{i}]",
            )


def _check_work(
    settings: DecodeConfig,
    nbest: int,
    given: dict,
    translator: Translator,
    limits: Limits,
    lines: list[str] | None = None,
) -> None:
    """Refuse settings that would keep the worker busy for everyone: a beam (or number of
    samples) over `max_beam`, outputs allowed to grow past `max_output` subwords, or more than
    `max_work` hypothesis steps (beam × the output length limits of the request's sentences).
    Without `lines` (the server's defaults), for a source as long as the model takes."""
    width, key = (nbest, "nbest") if settings.sample else (settings.beam, "beam")
    if width > limits.max_beam:
        raise _Refused(422, f"{key} {width}: this server allows at most {limits.max_beam}", key)
    cap = translator.max_source_tokens or limits.max_chars
    if lines is None:
        lengths = [cap]
    else:
        lengths = [min(len(ids), cap) for ids in translator.tokenizer.encode_source(lines)]
    limits_of = length_limits(settings, torch.tensor(lengths) + 1).tolist()  # + 1: the EOS
    longest = max(limits_of, default=0)
    if longest > limits.max_output:
        field = next((k for k in ("max_len_a", "max_len_b") if k in given), None)
        raise _Refused(
            422,
            f"max_len_a {settings.max_len_a} and max_len_b {settings.max_len_b} let an output "
            f"of a {max(lengths)}-subword source grow to {longest:,.0f} subwords; this server "
            f"stops at {limits.max_output}",
            field,
        )
    work = width * sum(limits_of)
    if work > limits.max_work:
        raise _Refused(
            422,
            f"text: {len(lengths)} sentences × {key} {width} × their output length limits is "
            f"{work:,.0f} hypothesis steps; this server takes at most {limits.max_work:,} a "
            f"request (send fewer sentences or a smaller {key})",
            "text",
        )


def _invalid_body(error: RequestValidationError) -> _Refused:
    """The first of pydantic's complaints, as one line naming its field."""
    first = error.errors()[0]
    # The field's path, without "body" and the union member tags ("list[str]") pydantic adds.
    path = [str(part) for part in first.get("loc", ()) if part != "body" and "[" not in str(part)]
    if first.get("type") == "json_invalid":
        return _Refused(400, f"malformed JSON: {first.get('msg', '')}")
    field = path[0] + "".join(f"[{part}]" for part in path[1:]) if path else None
    if first.get("type") == "extra_forbidden":
        message = f"{field}: unknown field"
    elif field is None:
        message = f"the body must be a JSON object: {first.get('msg', '')}"
    else:
        message = f"{field}: {first.get('msg', 'invalid')}"
    return _Refused(422, message, field)


def _from_nmt_error(error: NmtError, fields: set[str]) -> _Refused:
    """A Translator's refusal ("option: beam must be ...") as a 422 naming the field."""
    message = str(error).removeprefix("option: ")
    named = [word for word in re.findall(r"\w+", message) if word in fields]
    return _Refused(422, message, named[0] if named else None)


def _answer(
    translator: Translator,
    line: str,
    hyps: list[Hypothesis],
    nbest: int,
    attention: bool,
    steps: bool,
) -> dict:
    best = hyps[0]
    entry = _scored(best)
    if nbest > 1:
        entry["nbest"] = [_scored(hyp) for hyp in hyps]
    if attention:
        entry["attention"] = translator.attention_record(line, best)
    if steps:
        entry["steps"] = best.steps or []
    return entry


def _scored(hyp: Hypothesis) -> dict[str, Any]:
    """A translation with its normalized score, raw log-probability and length in subwords."""
    return {
        "text": hyp.text,
        "score": hyp.score,
        "log_prob": hyp.log_prob,
        "length": len(hyp.tokens),
    }


def describe_runs(run_dirs: list[Path], checkpoint: str, quantize: str = "") -> dict:
    """What GET /info says about the served run(s): languages, the recipe's model and
    tokenizer, parameters, the checkpoint and the dev scores training recorded."""
    recipe = Recipe.load(run_dirs[0] / RECIPE).to_dict()
    return {
        "runs": [str(run) for run in run_dirs],
        "source_language": recipe["data"]["src_lang"],
        "target_language": recipe["data"]["tgt_lang"],
        "model": recipe["model"],
        "tokenizer": recipe["tokenizer"],
        "checkpoint": checkpoint,
        "quantize": quantize or None,
        "members": [_describe_member(run, checkpoint) for run in run_dirs],
    }


def _describe_member(run_dir: Path, checkpoint: str) -> dict:
    """One run's checkpoint: its model parameters (the `model.` tensors; a checkpoint also
    holds optimizer moments), the step and dev scores training recorded for it. An averaged
    checkpoint (nmt-average) has no step of its own: it names what it averages."""
    from safetensors import safe_open

    path = run_dir / CHECKPOINTS / checkpoint
    meta = read_meta(path)
    tied = {f"model.{key}" for key in tied_keys(Recipe.load(run_dir / RECIPE).model)}
    with safe_open(weights_path(path, meta), "pt") as weights:
        parameters = sum(
            math.prod(weights.get_slice(name).get_shape())
            for name in weights.keys()
            if name.startswith("model.") and name not in tied
        )
    described: dict[str, Any] = {"run": str(run_dir), "parameters": parameters}
    if meta.get("averaged_from"):
        return {**described, "averaged_from": meta["averaged_from"], "step": None}
    progress = meta.get("progress") or {}
    validations = []
    with contextlib.suppress(OSError):
        with open(run_dir / METRICS, encoding="utf-8", newline="") as rows:
            validations = [row for row in csv.DictReader(rows) if row.get("kind") == "valid"]
    step = progress.get("step")
    at_step = [row for row in validations if row.get("step") == str(step)]
    row = at_step[-1] if at_step else {}
    return {
        **described,
        "step": step,
        "dev_bleu": float(row["dev_bleu"]) if row.get("dev_bleu") else None,
        "dev_chrf": float(row["dev_chrf"]) if row.get("dev_chrf") else None,
        "best_dev": progress.get("best"),
        "best_step": progress.get("best_step"),
    }


class _BodyLimit:
    """Refuse a request body over `limit` bytes with 413, by its Content-Length or, for a
    body sent in chunks, as soon as the bytes received pass the limit (never held whole)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        too_large = HTTPException(413, f"the request body is over {self.limit:,} bytes")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"error": too_large.detail, "field": None}, 413)(
                scope, receive, send
            )
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large
            return message

        await self.app(scope, limited, send)


PAGE = resources.files("nmt.serving").joinpath("page.html").read_text(encoding="utf-8")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free one), or an NmtError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said out loud: asyncio turns Nagle's algorithm off only on sockets that say it,
    # and with it on every answer waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise NmtError(f"--host {host} --port {port}: cannot listen there: {error.strerror}")
    sock.listen(2048)
    return sock


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `app` (made with `search_thread=False`) until SIGINT or SIGTERM: HTTP in a thread
    of its own, the search in this one (see `Batcher.run`); requests in flight are answered
    first. The address (with the port the system chose for port 0) is logged once the socket
    listens."""
    sock = listen(host, port)
    bound = sock.getsockname()[0]  # what the socket listens on, not what was asked for
    shown = f"[{bound}]" if sock.family == socket.AF_INET6 else bound
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("--host %s: reachable from other machines, and nmt-serve has no login", host)
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=60,
        limit_concurrency=app.state.service.limits.max_connections,  # beyond: 503
    )
    server = uvicorn.Server(config)
    batcher = app.state.service.batcher

    def serve_http() -> None:
        try:
            server.run(sockets=[sock])
        finally:  # however uvicorn ends, the search loop below ends too
            batcher.stop()

    http = threading.Thread(target=serve_http, name="nmt-http", daemon=True)

    def stop(signum: int, frame: object) -> None:  # uvicorn's own way: stop taking requests,
        if server.should_exit:  # answer those in flight; twice: at once, answering nothing more
            server.force_exit = True
            batcher.stop(now=True)
            # The requests left are cancelled, which uvicorn would log as errors with traces.
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        log.info("serving on http://%s:%d/ (Ctrl-C stops)", shown, sock.getsockname()[1])
        try:
            batcher.run()  # until the application's shutdown (or uvicorn's end) stops it
        finally:
            server.should_exit = True  # however the search loop ended, stop taking requests
        # Stopped at once (a second signal): requests left open would hold uvicorn's shutdown
        # (Python 3.12 waits for their connections); the process ends without waiting.
        http.join(timeout=1.0 if batcher.abandoned else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
