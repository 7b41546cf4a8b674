"""The commands: argument parsing over the Python API, and nothing else.

Every command turns an NmtError into one line on stderr and exit code 2, and Ctrl-C into
exit code 130; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import os
import re
import select
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence, get_type_hints

from tqdm import tqdm

from nmt.files import atomic_write_text
from nmt.data.corpus import decode_stream, read_lines
from nmt.errors import NmtError, Terminated
from nmt.recipe import DecodeConfig, Recipe, field_summary, recipe_fields
from nmt.run_dir import CURVES, METRICS, RECIPE, TUNED, record_of

log = logging.getLogger("nmt")


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear through a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake in the arguments is one line like any other (no usage dump)."""

    def error(self, message: str):
        raise NmtError(f"{message} (see {self.prog} --help)")


_owns_process = False  # whether the command running is the whole program (see _command)


def _command(name: str) -> Callable:
    def wrap(body: Callable[[list[str] | None], int | None]) -> Callable:
        @functools.wraps(body)
        def run(argv: list[str] | None = None, whole_program: bool | None = None) -> None:
            """`whole_program` (default: `argv` is None, as a console script calls it): the
            process is the command's, so it may tune the garbage collector (`_loading`), and
            it ends here, without the interpreter's teardown."""
            global _owns_process
            if whole_program is None:
                whole_program = argv is None
            _owns_process = whole_program
            if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
                handler = _TqdmHandler()
                handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
                log.addHandler(handler)
                log.setLevel(logging.INFO)
            try:
                code = body(argv) or 0
            except NmtError as error:
                print(f"{name}: error: {_one_line(str(error))}", file=sys.stderr)
                code = 2
            except Terminated:
                print(f"{name}: terminated", file=sys.stderr)
                code = 143
            except KeyboardInterrupt:
                print(f"{name}: interrupted", file=sys.stderr)
                code = 130
            except BrokenPipeError:  # the reader went away (`| head`): end quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                code = 0
            except OSError as error:  # a path the system refuses: too long, no permission, ...
                where = f"{error.filename}: " if error.filename is not None else ""
                print(
                    f"{name}: error: {_one_line(where + (error.strerror or str(error)))}",
                    file=sys.stderr,
                )
                code = 2
            finally:
                _owns_process = False  # a later call from Python must not inherit it
            if whole_program:  # its outputs are all written and closed: skip the
                _exit_now(code)  # interpreter's teardown of torch (~0.4 s)
            sys.exit(code)

        return run

    return wrap


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """Importing PyTorch and loading a model leave some 2·10⁵ long-lived objects, which the
    garbage collector's full passes then walk again and again (40-80 ms each) for little. In a
    process the command owns, collection pauses while loading; what PyTorch's import made is
    frozen out of later passes (with the ~7,000 small objects the import leaves unreachable:
    collecting them would cost a full pass, 0.1-0.3 s), then what loading left unreachable (a
    quantized model's float layers: ~9 MB) is collected, in a pass over only what loading made,
    and the rest frozen too (a whole translation of Multi30k's test set: 2.75 → 2.44 s,
    benchmarks/README.md)."""
    if not _owns_process:  # a caller's process: its collector is theirs
        yield
        return
    gc.disable()
    try:
        import torch  # noqa: F401  (most of the objects)

        gc.freeze()
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()


def _one_line(message: str) -> str:
    """A message on one line whatever it quotes: a file name may hold a newline (or another
    character that ends a line somewhere), so such characters are escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _exit_now(code: int) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader went away, or the stream is closed
            pass
    os._exit(code)


# ---------------------------------------------------------------------- nmt-train


@_command("nmt-train")
def train_main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="nmt-train",
        description="Train a translation model from a recipe.",
        epilog="Overrides come after the recipe: nmt-train recipe.yaml train.max_steps=200 "
        "model.attention=luong-general",
    )
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe values to override, by dotted key"
    )
    parser.add_argument("--run-dir", help="where the run is written (default: runs/NAME)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a run directory that already holds a run",
    )
    args = parser.parse_intermixed_args(argv)
    with _loading():
        from nmt.training import train  # torch and datasets load once the arguments are fine

    recipe = Recipe.load(args.recipe, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    result = train(recipe, run_dir, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the run
        print(
            f"best dev {result.metric} {result.best:.2f} at step {result.best_step} "
            f"({result.steps} steps, {result.elapsed_s / 60:.1f} min); "
            f"translate with: nmt-translate -m {run_dir}"
        )
    return 0


# ---------------------------------------------------------------------- nmt-translate


@_command("nmt-translate")
def translate_main(argv: list[str] | None = None) -> int:
    args = _translate_parser().parse_args(argv)
    _check_translate_args(args)
    translator, options, settings = _load_translator(args)
    if args.tune:
        return _tune(translator, args)
    if args.self_check:
        return _self_check(translator, args, options, settings.batch_size)
    if (
        args.input is None
        and args.output is None
        and args.ref is None
        and not _wants_attention(args)
        and not args.prefix_file
    ):
        return _translate_stream(translator, args, options, settings.batch_size)
    return _translate_whole(translator, args, options)


def _translate_parser() -> _Parser:
    """nmt-translate's arguments: the decoding options of DecodeConfig, the rest written out
    here."""
    parser = _Parser(
        prog="nmt-translate",
        description="Translate plain text with a trained run. Reads "
        "stdin and writes stdout unless -i/-o are given; unset search options come from the "
        "run's decode.yaml (see --tune), then from its recipe's decode section.",
    )
    _add_model_options(parser)
    parser.add_argument(
        "-i", "--input", help="file to translate, one sentence a line (default or `-`: stdin)"
    )
    parser.add_argument(
        "-o", "--output", help="file to write, whole and atomically (default or `-`: stdout)"
    )
    parser.add_argument(
        "--nbest",
        type=int,
        default=1,
        help="print N hypotheses per line as 'LINE ||| TEXT ||| SCORE'",
    )
    parser.add_argument(
        "--prefix-file",
        metavar="FILE",
        help="one target prefix per input line: each output begins with it",
    )
    parser.add_argument(
        "--scores",
        action="store_true",
        help="print each output's normalized score before it, tab-separated",
    )
    parser.add_argument(
        "--ref", help="reference file: print a BLEU/chrF/TER report after translating"
    )
    parser.add_argument(
        "--attention",
        metavar="FILE",
        help="write each best output's attention matrix as JSON lines",
    )
    parser.add_argument(
        "--plot-attention",
        metavar="DIR",
        help="write an attention heatmap per sentence as DIR/line-N.png",
    )
    parser.add_argument(
        "--plot-lines",
        type=int,
        nargs="+",
        metavar="N",
        help="with --plot-attention: only these line numbers (from 1)",
    )
    parser.add_argument(
        "--diagnose",
        metavar="FILE",
        help="write JSON lines flagging likely under-translation, "
        "over-translation, length-ratio outliers and low-confidence "
        "outputs (judged against the run's dev set)",
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="translate the input (its first 200 lines) one sentence at a time "
        "and in batches, and report any difference (exit code 1)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="grid-search beam size, length normalization and alpha on "
        "--dev-src/--dev-ref and save the best as the run's decoding "
        "defaults (RUN_DIR/decode.yaml)",
    )
    parser.add_argument("--dev-src", help="with --tune: source side of the dev set")
    parser.add_argument("--dev-ref", help="with --tune: reference side of the dev set")
    parser.add_argument(
        "--beams", type=int, nargs="+", default=[1, 5, 10], help="with --tune: beam sizes to try"
    )
    parser.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=[0.6, 1.0],
        help="with --tune: alphas to try for avg and gnmt",
    )
    _add_decode_options(parser)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The run(s) to load and how: nmt-translate's and nmt-serve's."""
    parser.add_argument(
        "-m",
        "--model",
        required=True,
        metavar="RUN_DIR",
        action="append",
        help="run directory written by nmt-train; repeat for an ensemble of "
        "runs that share a vocabulary",
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="checkpoint name: best, last, step-N, or one made by nmt-average",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8 linear layers: faster on a CPU for a little BLEU (see benchmarks/README.md)",
    )


def _load_translator(args: argparse.Namespace):
    """The Translator of -m/--checkpoint/--device/--quantize, its decoding defaults changed by
    the decoding flags (each checked), and those flags' values (None: not given)."""
    with _loading():
        from nmt.checkpoint import check_name
        from nmt.translate import Translator

        translator = Translator.from_runs(
            args.model,
            check_name(args.checkpoint, "--checkpoint"),
            args.device,
            args.quantize or "",
        )
    flags = _decode_flags()  # the keyword options of Translator.nbest, each with its flag
    options = {key: getattr(args, key) for key in flags}
    settings = translator.settings(args.nbest, {**flags, "nbest": "--nbest"}, **options)
    return translator, options, settings


def _decode_flags() -> dict[str, str]:
    """The flag of each decoding option, a field of DecodeConfig: --KEY-WITH-DASHES, unless the
    field's metadata spells it otherwise (`option(..., flag=...)`)."""
    return {
        f.name: f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        for f in recipe_fields(DecodeConfig)
    }


def _add_decode_options(parser: argparse.ArgumentParser) -> None:
    """One flag per field of DecodeConfig, typed, limited to its choices and explained from the
    field's metadata; a flag not given is None (the run's value). The ranges are checked by
    Translator.settings, as recipe values are."""
    flags, hints = _decode_flags(), get_type_hints(DecodeConfig)
    labels = {**flags, "nbest": "--nbest"}  # `key` in a field's help becomes its flag
    group = parser.add_argument_group(
        "decoding options",
        "the keys of a recipe's decode section; unset ones come from the "
        "run's decode.yaml, then from its recipe",
    )
    for f in recipe_fields(DecodeConfig):
        kind, choices = hints[f.name], f.metadata.get("choices")
        first = field_summary(f)
        text = re.sub(r"`(\w+)`", lambda m: labels.get(m[1], m[0]), first.removesuffix("."))
        default = str(f.default).lower() if kind is bool else f.default  # as YAML says it
        described = f"{text} (recipe default {default})".replace("%", "%%")  # argparse's %
        if kind is bool:
            group.add_argument(
                flags[f.name], dest=f.name, action="store_true", default=None, help=described
            )
        else:
            converted = {} if kind is str else {"type": kind}  # text is kept as given
            group.add_argument(
                flags[f.name],
                dest=f.name,
                choices=choices,
                help=described,
                metavar=None if choices else {int: "N", float: "X"}.get(kind),
                **converted,
            )


def _check_translate_args(args: argparse.Namespace) -> None:
    """Arguments that go together, and paths that can be read and written, before any work."""
    args.input, args.output = (
        None if path == "-" else path  # `-`: stdin, stdout
        for path in (args.input, args.output)
    )
    if args.plot_lines and not args.plot_attention:
        raise NmtError("--plot-lines goes with --plot-attention DIR")
    if (args.dev_src or args.dev_ref) and not args.tune:
        raise NmtError("--dev-src and --dev-ref go with --tune")
    _check_paths(
        [
            ("-i", args.input),
            ("--ref", args.ref),
            ("--prefix-file", args.prefix_file),
            ("--dev-src", args.dev_src),
            ("--dev-ref", args.dev_ref),
            *_run_inputs(args.model),
        ],
        [("-o", args.output), ("--attention", args.attention), ("--diagnose", args.diagnose)],
        [("--plot-attention", args.plot_attention)],
    )


def _wants_attention(args: argparse.Namespace) -> bool:
    return bool(args.attention or args.plot_attention or args.diagnose)


def _render(args: argparse.Namespace, index: int, hyps: list) -> list[str]:
    """The output lines of one input line: n-best lines, or the best (with its score)."""
    if args.nbest > 1:
        return [f"{index} ||| {h.text} ||| {h.score:.4f}" for h in hyps]
    return [f"{hyps[0].score:.4f}\t{hyps[0].text}" if args.scores else hyps[0].text]


def _self_check(translator, args: argparse.Namespace, options: dict, batch_size: int) -> int:
    lines = _read_input(args.input)
    problems = translator.self_check(lines[:200], nbest=args.nbest, **options)
    for problem in problems:
        print(f"nmt-translate: self-check: {problem}", file=sys.stderr)
    print(
        f"self-check: {min(len(lines), 200)} lines, {len(problems)} differences between "
        f"batch size 1 and {batch_size}"
    )
    return 1 if problems else 0


def _translate_stream(translator, args: argparse.Namespace, options: dict, batch_size: int) -> int:
    """stdin → stdout: streamed in chunks, so memory stays bounded in a pipe."""
    count = 0
    for chunk in _stdin_chunks(batch_size * 16):
        for hyps in translator.nbest(
            chunk, nbest=args.nbest, line_numbers=range(count, count + len(chunk)), **options
        ):
            print("\n".join(_render(args, count, hyps)), flush=True)
            count += 1
    return 0


def _translate_whole(translator, args: argparse.Namespace, options: dict) -> int:
    """The whole input at once: written whole (-o), with attention, diagnostics and scores."""
    lines, prefixes, references = _translation_inputs(args)
    wants_attention = _wants_attention(args)
    results = translator.nbest(
        lines,
        nbest=args.nbest,
        progress=True,
        prefixes=prefixes,
        keep_attention=wants_attention,
        **options,
    )
    text = "".join(out + "\n" for i, hyps in enumerate(results) for out in _render(args, i, hyps))
    if args.output:
        with _writing("-o", args.output):
            atomic_write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    if wants_attention:
        _write_attention(args, translator, lines, results, options)
    if references is not None:
        from nmt.scoring.metrics import score

        report = score([hyps[0].text for hyps in results], [references])
        print(report.format(), file=sys.stderr if not args.output else sys.stdout)
    return 0


def _translation_inputs(
    args: argparse.Namespace,
) -> tuple[list[str], list[str] | None, list[str] | None]:
    """The input lines, prefixes (--prefix-file) and references (--ref), checked to match."""
    prefixes = read_lines(Path(args.prefix_file)) if args.prefix_file else None
    lines = _read_input(args.input)
    source = args.input or "<stdin>"
    if prefixes is not None:
        _line_counts([(source, lines), (args.prefix_file, prefixes)])
    references = read_lines(Path(args.ref)) if args.ref else None
    if references is not None:  # a mismatch found after translating would waste it
        _parallel([(source, lines), (args.ref, references)])
    for number in args.plot_lines or ():
        if not 1 <= number <= len(lines):
            raise NmtError(f"--plot-lines {number}: {source} has lines 1 to {len(lines)}")
    return lines, prefixes, references


def _read_input(path: str | None) -> list[str]:
    """The lines of a file, or of stdin (checked alike: UTF-8, not binary)."""
    return read_lines(Path(path)) if path else list(decode_stream("<stdin>", sys.stdin.buffer))


def _parallel(named: list[tuple[str, list[str]]]) -> None:
    """Files read side by side: none empty, and one line per sentence in each."""
    for path, lines in named:
        if not lines:
            raise NmtError(f"{path}: an empty file; it needs one line per sentence")
    _line_counts(named)


def _line_counts(named: list[tuple[str, list[str]]]) -> None:
    (first, lines), *others = named
    for path, other in others:
        if len(other) != len(lines):
            raise NmtError(
                f"{path} has {len(other)} lines but {first} has {len(lines)}; "
                f"they need one line per sentence"
            )


def _run_inputs(runs: list[str]) -> list[tuple[str, str]]:
    """Run directories, and their files that translating reads (checkpoints/ aside)."""
    return [("-m", run) for run in runs] + [
        (f"-m {run}", str(path))
        for run in runs
        if "\0" not in run
        for path in (
            Path(run) / RECIPE,
            Path(run) / TUNED,
            *Path(run).glob("spm*.model"),
        )
    ]


def _check_paths(
    inputs: list[tuple[str, str | None]],
    outputs: list[tuple[str, str | None]],
    folders: Sequence[tuple[str, str | None]] = (),
    into_run: bool = False,
) -> None:
    """Refuse, before any work, outputs (files, or `folders` of files) that cannot be written,
    or that would replace an input, each other, or what nmt wrote in any run directory
    (`run_dir.record_of`; `into_run`: the run file this command exists to write, nmt-average's
    checkpoint or --tune's decode.yaml): found after translating, such a mistake costs the
    whole run. Writing can still fail (a full
    disk); `_writing` reports that."""
    for flag, path in [*inputs, *outputs, *folders]:
        if path == "" or path is not None and "\0" in path:
            raise NmtError(f"{flag} {path!r}: not a file name")
    written: list[tuple[str, Path]] = []
    for (flag, path), is_folder in [
        *((output, False) for output in outputs),
        *((folder, True) for folder in folders),
    ]:
        if path is None:
            continue
        target = Path(path)
        if target.exists() and not target.is_dir() and not target.is_file():
            if not os.access(target, os.W_OK):  # a device or pipe, such as /dev/stdout
                raise NmtError(f"{flag} {path}: cannot write there (not writable)")
            continue  # written in place, replacing nothing
        if target.is_dir() != is_folder and target.exists():
            raise NmtError(
                f"{flag} {path}: " + ("not a folder" if is_folder else "a folder; give a file name")
            )
        ancestor = next(
            p for p in (*([target] if is_folder else []), *target.parents) if p.exists()
        )
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise NmtError(
                f"{flag} {path}: cannot write there ({ancestor} is not a writable folder)"
            )
        for other_flag, other in [*inputs, *written]:
            if other is not None and _same_file(target, Path(other)):
                raise NmtError(
                    f"{flag} {path}: an input of this command ({other_flag}); "
                    f"writing it would replace it"
                )
        run = None if into_run else record_of(target)
        if run is not None:
            raise NmtError(f"{flag} {path}: part of the nmt run in {run}; write elsewhere")
        written.append((flag, target))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        try:
            return a.resolve() == b.resolve()
        except RuntimeError:  # a loop of symbolic links (Python < 3.13): no file there
            return False


@contextlib.contextmanager
def _writing(flag: str, path: str | Path) -> Iterator[None]:
    """Failing to write an output (written whole, atomically) is the user's to fix."""
    try:
        yield
    except OSError as error:
        raise NmtError(f"{flag} {path}: cannot write: {error.strerror or error}") from None


def _write_attention(
    args: argparse.Namespace, translator, lines: list[str], results: list, options: dict
) -> None:
    """--attention (JSON lines), --plot-attention (PNG per sentence) and --diagnose."""
    records = [translator.attention_record(line, hyps[0]) for line, hyps in zip(lines, results)]
    if args.diagnose:
        from nmt.scoring.diagnostics import dev_norms, diagnose

        norms = dev_norms(translator, Path(args.model[0]), **options)
        found = [
            diagnose(i + 1, line, record, hyps[0], norms)
            for i, (line, record, hyps) in enumerate(zip(lines, records, results))
            if line.strip()
        ]
        with _writing("--diagnose", args.diagnose):
            atomic_write_text(
                Path(args.diagnose),
                "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in found),
            )
        flagged = sum(1 for entry in found if entry["flags"])
        log.info("diagnostics: %d of %d outputs flagged, in %s", flagged, len(found), args.diagnose)
    if args.attention:
        with _writing("--attention", args.attention):
            atomic_write_text(
                Path(args.attention),
                "".join(
                    json.dumps({"line": i, **record}, ensure_ascii=False) + "\n"
                    for i, record in enumerate(records)
                ),
            )
    if args.plot_attention:
        from nmt.plots import plot_attention

        for number in args.plot_lines or range(1, len(lines) + 1):
            if lines[number - 1].strip():
                png = Path(args.plot_attention) / f"line-{number}.png"
                with _writing("--plot-attention", png):
                    plot_attention(records[number - 1], png, f"line {number}")


def _tune(translator, args: argparse.Namespace) -> int:
    from nmt.translate import save_tuned_decoding

    if not (args.dev_src and args.dev_ref) or len(args.model) != 1:
        raise NmtError("--tune needs one -m RUN_DIR, --dev-src and --dev-ref")
    _check_paths([], [("--tune", str(Path(args.model[0]) / TUNED))], into_run=True)
    for beam in args.beams:  # every setting of the grid checked before the first is tried
        translator.settings(beam=beam, sample=False, labels={"beam": "--beams"})
    for alpha in args.alphas:
        translator.settings(alpha=alpha, labels={"alpha": "--alphas"})
    sources, references = read_lines(Path(args.dev_src)), read_lines(Path(args.dev_ref))
    _parallel([(args.dev_src, sources), (args.dev_ref, references)])
    rows = translator.tune(sources, references, tuple(args.beams), tuple(args.alphas))
    print(f"{'beam':>4} {'norm':>5} {'alpha':>5} {'BLEU':>6} {'chrF':>6}")
    for row in rows:
        print(
            f"{row['beam']:>4} {row['length_norm']:>5} {row['alpha']:>5.2f} "
            f"{row['bleu']:>6.2f} {row['chrf']:>6.2f}"
        )
    best = {key: rows[0][key] for key in ("beam", "length_norm", "alpha")}
    with _writing("--tune", Path(args.model[0]) / TUNED):
        path = save_tuned_decoding(Path(args.model[0]), best)
    print(
        f"saved {best} to {path}; nmt-translate -m {args.model[0]} now uses it "
        f"(flags still override)"
    )
    return 0


def _stdin_chunks(size: int):
    """Lines of stdin (checked as a file's are) in chunks of at most `size`; a chunk also ends
    when no more input is waiting, so an interactive user gets each translation as soon as they
    press Enter."""
    stream = sys.stdin.buffer
    chunk: list[str] = []
    for line in decode_stream("<stdin>", stream):
        chunk.append(line)
        if len(chunk) >= size or not _input_waiting(stream):
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _input_waiting(stream) -> bool:
    try:
        return bool(select.select([stream], [], [], 0)[0])
    except (OSError, ValueError, TypeError):  # not a real file (tests, some platforms)
        return True


# ---------------------------------------------------------------------- nmt-score


@_command("nmt-score")
def score_main(argv: list[str] | None = None) -> int:
    args = _score_parser().parse_args(argv)
    _check_score_args(args)
    if args.curves:
        return _curves(args.curves)
    _check_score_paths(args)
    from nmt.scoring.metrics import ScoreOptions
    from nmt.scoring.report import build_report

    translator = None
    if args.analyze:  # loaded first: its mistakes are found before any work
        with _loading():
            from nmt.translate import Translator

            translator = Translator.from_run(args.model)
        for beam in args.beams or ():
            translator.settings(beam=beam, sample=False, labels={"beam": "--beams"})
    references, systems, sources, diagnostics = _scored_inputs(args)
    document = build_report(
        systems,
        references,
        sources,
        paired=args.paired,
        samples=args.samples,
        worst=args.worst,
        diagnostics=diagnostics,
        echo=print,
        options=ScoreOptions(args.lowercase, args.tokenize),
    )
    _write_report(args, document)
    if translator is not None:
        assert sources is not None  # --analyze needs -s (checked with the arguments)
        _analyze(args, translator, sources, systems[0][1], references[0])
    return 0


def _score_parser() -> _Parser:
    from nmt.scoring.metrics import TOKENIZERS  # sacreBLEU's that work offline

    parser = _Parser(
        prog="nmt-score",
        description="Score detokenized translations with sacreBLEU "
        "(BLEU, chrF, TER), printing each metric's signature.",
    )
    parser.add_argument(
        "-r", "--ref", action="append", help="reference file (repeat for several references)"
    )
    parser.add_argument(
        "-i",
        "--input",
        nargs="+",
        metavar="HYP",
        help="hypothesis file(s); with several, the first is the baseline "
        "that the others are tested against",
    )
    parser.add_argument(
        "-s",
        "--source",
        help="source file: adds BLEU by source length (and is needed by --analyze)",
    )
    parser.add_argument(
        "--paired",
        choices=("bs", "ar"),
        default="bs",
        help="significance test: paired bootstrap (bs) or approximate randomization (ar)",
    )
    parser.add_argument(
        "--samples", type=int, default=1000, help="bootstrap resamples (and randomization trials)"
    )
    parser.add_argument(
        "-lc",
        "--lowercase",
        action="store_true",
        help="compare lowercased text (BLEU, chrF; TER is case-insensitive already), as many "
        "papers on small data report; the signature says case:lc",
    )
    parser.add_argument(
        "--tokenize",
        choices=TOKENIZERS,
        help="BLEU's tokenization (sacreBLEU's; default 13a): `none` for text tokenized "
        "beforehand, as tokenized-BLEU papers did; the signature says tok:...",
    )
    parser.add_argument(
        "--worst", type=int, default=5, help="show the N sentences with the lowest chrF (0: none)"
    )
    parser.add_argument(
        "--curves",
        metavar="RUN_DIR",
        help="draw RUN_DIR's learning curves into RUN_DIR/curves.png and stop",
    )
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--html", help="also write the report as one self-contained HTML page")
    parser.add_argument(
        "--diagnostics",
        metavar="FILE",
        help="JSON lines from nmt-translate --diagnose to include in the report "
        "(flagged sentences)",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="search error or model error? Needs -m RUN_DIR and -s SOURCE: the "
        "model scores each reference against its own output",
    )
    parser.add_argument("-m", "--model", metavar="RUN_DIR", help="with --analyze: the run")
    parser.add_argument(
        "--beams",
        type=int,
        nargs="+",
        help="with --analyze: also translate the source with these beam sizes "
        "and show how the shares change",
    )
    return parser


def _check_score_args(args: argparse.Namespace) -> None:
    for flag, value in (("--samples", args.samples), ("--worst", args.worst)):
        if value < 0:
            raise NmtError(f"{flag} must be at least 0, not {value}")
    if (args.model or args.beams) and not args.analyze:
        raise NmtError("-m and --beams go with --analyze")
    if args.analyze and not (args.model and args.source):
        raise NmtError("--analyze needs -m RUN_DIR and -s SOURCE")


def _check_score_paths(args: argparse.Namespace) -> None:
    if not (args.ref and args.input):
        raise NmtError("give -r REFERENCE and -i HYPOTHESES (or --curves RUN_DIR)")
    _check_paths(
        [
            *(("-r", ref) for ref in args.ref),
            *(("-i", hyp) for hyp in args.input),
            ("-s", args.source),
            ("--diagnostics", args.diagnostics),
            *_run_inputs([args.model] if args.model else []),
        ],
        [("--json", args.json), ("--html", args.html)],
    )


def _curves(run_dir: str) -> int:
    from nmt.plots import plot_learning_curves

    metrics, png = Path(run_dir) / METRICS, Path(run_dir) / CURVES
    if not metrics.is_file():
        raise NmtError(f"{run_dir}: no metrics.csv; give a run directory of nmt-train")
    with _writing("--curves", png):
        plot_learning_curves(metrics, png)
    print(f"wrote {png}")
    return 0


def _scored_inputs(
    args: argparse.Namespace,
) -> tuple[list[list[str]], list[tuple[str, list[str]]], list[str] | None, list[dict] | None]:
    """References, (name, hypotheses) of each system, sources and --diagnostics entries, read
    and checked to be parallel."""
    from nmt.scoring.report import read_diagnostics

    named_references = [(ref, read_lines(Path(ref))) for ref in args.ref]
    references = [lines for _, lines in named_references]
    systems = [(path, read_lines(Path(path))) for path in args.input]
    sources = read_lines(Path(args.source)) if args.source else None
    _parallel(
        [*named_references, *systems, *([(args.source, sources)] if sources is not None else [])]
    )
    diagnostics = (
        read_diagnostics(Path(args.diagnostics), len(references[0])) if args.diagnostics else None
    )
    return references, systems, sources, diagnostics


def _write_report(args: argparse.Namespace, document: dict) -> None:
    """--json and --html, each written whole."""
    from nmt.scoring.report import report_json

    if args.json:
        with _writing("--json", args.json):
            atomic_write_text(Path(args.json), report_json(document))
    if args.html:
        from nmt.scoring.html import render

        with _writing("--html", args.html):
            atomic_write_text(Path(args.html), render(document, f"nmt-score: {args.ref[0]}"))


def _analyze(
    args: argparse.Namespace,
    translator,
    sources: list[str],
    hypotheses: list[str],
    references: list[str],
) -> None:
    from nmt.scoring.analysis import analyze

    decode = translator.decode
    print(
        f"\nerror analysis of {args.input[0]} (length normalization {decode.length_norm}, "
        f"alpha {decode.alpha}, coverage penalty {decode.coverage_penalty}, length limit "
        f"{decode.max_len_a}·|x|+{decode.max_len_b}):"
    )
    print(analyze(translator, sources, hypotheses, references).format())
    if args.beams:
        print(f"\n{'beam':>4} {'BLEU':>6} {'differ':>6} {'search':>7} {'model':>7} {'limit':>7}")
        from nmt.scoring.metrics import corpus_bleu

        for beam in args.beams:
            outputs = [h.text for h in translator.translate(sources, beam=beam, sample=False)]
            result = analyze(translator, sources, outputs, references)
            print(
                f"{beam:>4} {corpus_bleu(outputs, references):6.2f} "
                f"{len(result.verdicts):>6} {result.share('search'):6.1f}% "
                f"{result.share('model'):6.1f}% {result.share('limit'):6.1f}%"
            )


# ---------------------------------------------------------------------- nmt-serve


@_command("nmt-serve")
def serve_main(argv: list[str] | None = None) -> int:
    args = _serve_parser().parse_args(argv)
    _check_serve_args(args)
    with _loading():  # the web stack and PyTorch; the model loads in _load_translator
        try:
            from nmt.serving.app import Limits, create_app, describe_runs, serve
        except ImportError as error:
            raise NmtError(
                f"nmt-serve needs its web stack ({error.name} is missing): "
                f"pip install 'nmt[serve]' (or pip install -e '.[serve]' in a clone)"
            ) from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.nbest = 1
    translator, _, settings = _load_translator(args)
    translator.decode = settings  # the flags are the server's defaults
    info = describe_runs([Path(run) for run in args.model], args.checkpoint, args.quantize or "")
    limits = Limits(
        max_sentences=args.max_sentences,
        max_chars=args.max_chars,
        max_body=args.max_body,
        max_beam=args.max_beam,
        max_output=args.max_output,
        max_work=args.max_work,
        max_connections=args.max_connections,
        max_pending=args.max_pending,
        max_wait=args.batch_wait / 1000,
    )
    serve(create_app(translator, info, limits, search_thread=False), args.host, args.port)
    return 0


def _serve_parser() -> _Parser:
    parser = _Parser(
        prog="nmt-serve",
        description="Serve a trained run as a JSON API (POST /translate, /score; GET /info, "
        "/health) with a page at / that shows attention and beam search at work. Stops on "
        "Ctrl-C or SIGTERM once the requests in flight are answered.",
    )
    _add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads of the search (0: torch's default)"
    )
    defaults = {
        "max_sentences": ("N", "sentences per request"),
        "max_chars": ("N", "characters per sentence"),
        "max_body": ("BYTES", "bytes per request body"),
        "max_beam": ("N", "beams (or samples) per sentence"),
        "max_output": ("N", "subwords an output may grow to (max_len_a·|source| + max_len_b)"),
        "max_work": ("N", "hypothesis steps per request (sentences × beam × output limit)"),
        "max_connections": (
            "N",
            "open connections and requests (the new one included); at this many, a new "
            "request gets uvicorn's plain-text 503",
        ),
        "max_pending": ("N", "sentences waiting to be searched; beyond, requests get 503"),
    }
    from nmt.serving.limits import DEFAULT_LIMITS

    for key, (metavar, text) in defaults.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=getattr(DEFAULT_LIMITS, key),
            metavar=metavar,
            help=f"at most this many {text} (default %(default)s)",
        )
    parser.add_argument(
        "--batch-wait",
        type=float,
        default=DEFAULT_LIMITS.max_wait * 1000,
        metavar="MS",
        help="milliseconds a request waits for others to be searched with (default %(default)s)",
    )
    _add_decode_options(parser)
    return parser


def _check_serve_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise NmtError(f"--port {args.port}: expected 0 to 65535")
    limits = ("max_sentences", "max_chars", "max_body", "max_beam", "max_output", "max_work")
    for flag in ("threads", *limits, "max_connections", "max_pending"):
        value = getattr(args, flag)
        least = 0 if flag == "threads" else 1
        if value < least:
            raise NmtError(f"--{flag.replace('_', '-')} {value}: must be at least {least}")
    if not 0 <= args.batch_wait <= 10_000:
        raise NmtError(f"--batch-wait {args.batch_wait}: expected 0 to 10000 milliseconds")
    _check_paths([*_run_inputs(args.model)], [])


# ---------------------------------------------------------------------- nmt-average


@_command("nmt-average")
def average_main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="nmt-average",
        description="Average the weights of checkpoints of one run into a "
        "new checkpoint; translate with it through nmt-translate --checkpoint NAME.",
    )
    parser.add_argument("-m", "--model", required=True, metavar="RUN_DIR")
    parser.add_argument(
        "-c",
        "--checkpoints",
        nargs="+",
        metavar="NAME",
        help="checkpoint names, e.g. step-3000 step-3500 (default: every "
        "step-N the run kept, see train.keep_best)",
    )
    parser.add_argument("-o", "--output", default="averaged", help="name of the new checkpoint")
    args = parser.parse_args(argv)
    from nmt.checkpoint import average_checkpoints, averaging_plan

    sources, target = averaging_plan(
        args.model, args.checkpoints, args.output, labels={"names": "-c", "output": "-o"}
    )
    _check_paths([], [("-o", f"{target}.json")], into_run=True)
    with _writing("-o", target):
        average_checkpoints(sources, target)
    print(
        f"averaged {', '.join(path.name for path in sources)} into {target}; translate with: "
        f"nmt-translate -m {args.model} --checkpoint {target.name}"
    )
    return 0


COMMANDS = {
    "train": train_main,
    "translate": translate_main,
    "score": score_main,
    "average": average_main,
    "serve": serve_main,
}


def main(argv: list[str] | None = None) -> None:
    """`python -m nmt COMMAND ...`."""
    whole_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m nmt {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(2)
    COMMANDS[argv[0]](argv[1:], whole_program)
