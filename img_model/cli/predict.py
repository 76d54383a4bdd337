"""img-predict: a checkpoint answering typed queries on a video file, and a local demo page (serve).

A thin layer over img_model.predict.predictor.Predictor: the CLI maps flags onto it and prints its answers; every
failure is one line on stderr.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from extract.core.console import EXIT_FAILED, EXIT_USAGE, CommandGroup, fail, setup_logging
from extract.core.errors import ImgVmrError, OutputWriteError, UsageError, VideoDecodeError
from extract.core.files import jsonl_objects
from extract.core.options import BoundedNumber, precision_option
from img_model.cli.options import write_failed
from img_model.train.config import MAX_THREADS

log = logging.getLogger("img_vmr.img_model.cli.predict")  # by name: `python -m` runs it as __main__
PROGRAM = "img-predict"
OUR_LOGGERS = ("img_vmr.img_model.predict.", "img_vmr.img_model.cli.predict")
EXTRACTION_RUN_LOGGER = "img_vmr.extract.run."
MAX_SECONDS = 1e7  # --gt: far beyond any video (115 days)
EXIT_STATUS = (
    "\b\nExit status: 0 answered, 1 the video could not be read (the stage and the reason are said) or an "
    "internal error, 2 usage error: a bad query, a --plot path that cannot be written, a checkpoint or weights "
    "that do not fit, or a --cache another process still extracts into after 30 min, 3 the feature cache or the "
    "plot could not be written (a full disk: the answers are printed first)."
)


@click.group(PROGRAM, cls=CommandGroup, default="answer", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Answer text queries on a video with a trained IMG checkpoint: the start and end of the moment.

    \b
    img-predict --checkpoint RUN/best.pt VIDEO "query" ["query" ...]   answer (same as `img-predict answer ...`)
    img-predict serve --checkpoint RUN/best.pt --videos DIR            a demo page on http://127.0.0.1:8080
    img-predict batch --checkpoint RUN/best.pt --manifest M.csv --out DIR   many (video, query) rows: JSONL + HTML

    Every option: img-predict answer --help, img-predict serve --help, img-predict batch --help.
    """


def predictor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that build a Predictor (answer and serve share them)."""
    options = [
        click.option(
            "--checkpoint",
            required=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help="An img_model checkpoint: RUN/best.pt of img-train, or a converted official checkpoint.",
        ),
        click.option(
            "--cache",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Feature cache folder: a video's features are extracted once per recipe (default "
            "$IMG_PREDICT_CACHE or ~/.cache/img-vmr/predict). Processes may share it: one extracting makes the "
            "others wait (up to 30 min).",
        ),
        click.option(
            "--weights-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Folder with the feature models' weights, as for img-extract (default $IMG_WEIGHTS_DIR or "
            "~/.cache/img-vmr). Their sha256 must be the checkpoint's.",
        ),
        click.option("--clip-model", default=None, help="CLIP model folder or id, as for img-extract --clip-model."),
        click.option(
            "--text-model", default=None, help="BERT / CLIP-text model folder or id (default: the one recorded)."
        ),
        click.option(
            "--trust-weights",
            is_flag=True,
            help="Use feature or text model weights whose sha256 differs from the checkpoint's (with a warning).",
        ),
        click.option(
            "--visual",
            default=None,
            help="Converted checkpoints (no recorded recipe): the preset of their visual features.",
        ),
        click.option(
            "--audio", default=None, help="Converted checkpoints (no recorded recipe): the preset of their audio."
        ),
        click.option(
            "--glove",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="GloVe models: the GloVe text file the checkpoint was trained with (e.g. glove.840B.300d.txt). Words "
            "the training queries never had but the file has are read with their exact vectors (IMG's GloVe rows "
            "are frozen), instead of <UNK>. Default: the file recorded at training, when its index is in "
            "--glove-cache (img-extract text built it there).",
        ),
        click.option(
            "--glove-cache",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Where the GloVe index is (built on first use, as for img-extract text; default "
            "$IMG_WEIGHTS_DIR/glove-index or ~/.cache/img-vmr/glove-index).",
        ),
        click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Distinct spans."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        precision_option("the checkpoint's run's, as img-eval"),
        click.option(
            "--threads", type=click.IntRange(0, MAX_THREADS), default=0, help="torch CPU threads (0: torch's choice)."
        ),
        click.option("-v", "--verbose", is_flag=True, help="Debug messages, and the extraction run's log lines."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load(flags: dict[str, Any], progress: bool) -> Any:
    if not flags["verbose"]:  # here, not at start-up: transformers (and torch) load only when a model does
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    from img_model.predict.predictor import Predictor, PredictorOptions

    options = PredictorOptions(
        device=flags["device"],
        cache_dir=flags["cache"],
        weights_dir=flags["weights_dir"],
        clip_model=flags["clip_model"],
        text_model=flags["text_model"],
        trust_weights=flags["trust_weights"],
        precision=flags["precision"],
        threads=flags["threads"],
        top_k=flags["top_k"],
        visual=flags["visual"],
        audio=flags["audio"],
        progress=progress,
        glove=flags["glove"],
        glove_cache=flags["glove_cache"],
    )
    return Predictor.from_checkpoint(flags["checkpoint"], options)


def _quiet(record: logging.LogRecord) -> bool:
    """Without -v: our lines and every warning, but not the extraction run's own lines (its summary, and its
    failures, which come back as our one-line error) nor other INFO lines (device, precision)."""
    if record.name.startswith(OUR_LOGGERS):
        return True
    return record.levelno >= logging.WARNING and not record.name.startswith(EXTRACTION_RUN_LOGGER)


def _setup_logging(verbose: bool) -> None:
    """The console's lines (see _quiet); -v shows everything, the model loaders' progress bars too."""
    setup_logging(PROGRAM, verbose)
    if verbose:
        return
    for handler in logging.getLogger("img_vmr").handlers:
        handler.addFilter(_quiet)


def _layout_error(error: Exception) -> bool:
    """Whether error is a CheckpointLayoutError: asked without importing its module (and torch with it), which
    is loaded whenever one can be raised; an error before any model loads stays a torch-free start."""
    convert = sys.modules.get("img_model.network.convert")
    return convert is not None and isinstance(error, convert.CheckpointLayoutError)


def _one_line_errors(work: Callable[[], None]) -> None:
    try:
        work()
    except VideoDecodeError as error:
        fail(str(error), EXIT_FAILED)
    except OutputWriteError as error:  # the feature cache on a full disk: what it holds is whole
        log.debug("error", exc_info=True)
        write_failed(PROGRAM, error, "run img-predict again (or give --cache a folder with room)")
    except Exception as error:
        if isinstance(error, ImgVmrError) or _layout_error(error):
            log.debug("error", exc_info=True)
            fail(str(error), EXIT_USAGE)
        log.debug("internal error", exc_info=True)
        fail(f"internal error: {type(error).__name__}: {error} (run with -v for details)", EXIT_FAILED)


def _check_gt(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[float, float] | None:
    if not value:  # click gives () for an absent nargs=2 option
        return None
    start, end = value
    if start >= end:
        raise click.BadParameter(f"START {start:g} must be before END {end:g}", ctx, param)
    return float(start), float(end)


@main.command("answer", epilog=EXIT_STATUS)
@click.argument("video", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("queries", nargs=-1)
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help='More queries: a JSONL file of {"query": "..."} lines; a line with "start" and "end" (seconds) is a true '
    "span: the IoU of each branch is printed (other keys are ignored).",
)
@click.option(
    "--gt",
    "truth",
    type=BoundedNumber(0.0, MAX_SECONDS),
    nargs=2,
    default=None,
    metavar="START END",
    callback=_check_gt,
    help="The true span in seconds, for every query given (--queries lines with start/end keep theirs): prints "
    "the IoU of the fused, visual and audio answers, and --plot draws it.",
)
@click.option(
    "--drop-audio",
    is_flag=True,
    help="Also answer with the audio removed (a zero audio track, as img-eval's missing audio) and print both "
    "fused answers: whether the audio changed the span.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answers as one JSON object.")
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a figure: the waveform, P(start)/P(end) and the saliency over time, the answer, the top-k spans "
    "and the true span (if given) per query.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar while the video's features are extracted.")
@predictor_options
def answer_command(
    video: Path,
    queries: tuple[str, ...],
    queries_file: Path | None,
    truth: tuple[float, float] | None,
    drop_audio: bool,
    as_json: bool,
    plot: Path | None,
    no_progress: bool,
    **flags: Any,
) -> None:
    """Answer each QUERY on VIDEO: the moment's start and end in seconds, its score, the top-k distinct spans
    and the audio-importance score; beside it the visual-only and audio-only branches' spans, and with a true
    span (--gt, or start/end in --queries) the IoU of each.

    \b
    The video's features are made with the presets and weights recorded in the checkpoint (their sha256 is
    checked) and cached, so a second query on the same video costs only the model. Words the checkpoint's
    vocabulary does not know are read from the GloVe file (--glove) with their exact vectors, else as <UNK> with
    a warning; a query with no known word is refused. A video without audio is answered by the visual-only
    branch, and the answer says so.

    \b
    Examples:
      img-predict --checkpoint runs/charades/best.pt kitchen.mp4 "a person opens the fridge"
      img-predict --checkpoint runs/charades/best.pt kitchen.mp4 --queries q.jsonl --json --plot kitchen.png
      img-predict --checkpoint runs/charades/best.pt kitchen.mp4 "a person opens the fridge" --gt 3.2 7.5 --drop-audio
    """
    _setup_logging(flags["verbose"])

    def work() -> None:
        rows = [*((text, None) for text in queries), *(_read_queries_file(queries_file) if queries_file else [])]
        if not rows:
            raise UsageError('no query given: img-predict --checkpoint C VIDEO "what happens" (or --queries FILE)')
        texts = [text for text, _ in rows]
        truths = [row_truth or truth for _, row_truth in rows]
        if plot is not None:
            from img_model.predict.plot import check_plot_path

            check_plot_path(plot)  # before the answers are computed: a bad path fails at once
        predictor = _load(flags, progress=not no_progress)
        answers = predictor.predict(video, texts, truths=truths, drop_audio=drop_audio)
        from img_model.predict.text import answers_text

        click.echo(json.dumps(answers.as_json(), indent=2) if as_json else answers_text(answers))
        if plot is not None:
            from img_model.predict.plot import write_plot

            try:
                log.info("wrote %s", write_plot(answers, plot))
            except OutputWriteError as error:
                write_failed(PROGRAM, error, "run img-predict again (the answers are printed above)")

    _one_line_errors(work)


def _read_queries_file(path: Path) -> list[tuple[str, tuple[float, float] | None]]:
    """(query, its true span or None) per line of a --queries file."""
    from img_model.predict.manifest import check_truth

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read --queries {path} ({getattr(error, 'strerror', None) or error})") from None
    rows: list[tuple[str, tuple[float, float] | None]] = []
    for number, item in jsonl_objects(text, str(path), 'an object with a "query" string'):
        if not isinstance(item.get("query"), str):
            raise UsageError(f'{path} line {number}: expected an object with a "query" string')
        truth = None
        if "start" in item or "end" in item:
            start, end = item.get("start"), item.get("end")
            if not all(type(value) in (int, float) for value in (start, end)):  # not "1", true or null
                raise UsageError(f'{path} line {number}: "start" and "end" must both be numbers of seconds')
            truth = check_truth(start, end, f"{path} line {number}")
        rows.append((item["query"], truth))
    return rows


@main.command(
    "batch",
    epilog="\b\nExit status: 0 every row answered, 1 some rows failed (their lines say why; the others are "
    "answered) or an internal error, 2 usage error (a malformed manifest, a checkpoint or weights that do not fit), "
    "3 --out or the feature cache could not be written (a full disk; the lines written so far are kept).",
)
@click.option(
    "--manifest",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help='The rows: a .jsonl file of {"video": ..., "query": ..., "start": s, "end": s} lines or a .csv '
    "file with the columns video, query[, start, end][, video_id]. Video paths are relative to the manifest's "
    "folder; start/end (seconds, optional) are the true span.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for answers.jsonl (one line per row: the answer JSON with the video's keys, row and video_id; "
    "or the row's error) and report.html (a summary page). Created if missing; both files are replaced.",
)
@click.option(
    "--drop-audio",
    is_flag=True,
    help="Also answer each row with the audio removed (as img-eval --drop-audio), in the JSONL and the page.",
)
@click.option("--title", default="img-predict batch", show_default=True, help="The summary page's title.")
@predictor_options
def batch_command(manifest: Path, out: Path, drop_audio: bool, title: str, **flags: Any) -> None:
    """Answer every (video, query[, start, end]) row of a manifest with one checkpoint: one JSONL of answers and
    one HTML summary in --out, without running img-extract, img-extract text or img-eval by hand.

    \b
    Each video's features are made once (and cached, as for img-predict answer); its queries are then answered
    one by one. A video that cannot be read, or a query that cannot be (no known word), is a line with its
    "error" and the others go on. Rows with start/end get each branch's IoU; the page shows mean IoU and R1 per
    branch over them. The last line is the summary: rows, answered, failed, time and rows per second.

    \b
    Example:
      img-predict batch --checkpoint runs/charades/best.pt --manifest rows.csv --out batch/ --drop-audio
    """
    _setup_logging(flags["verbose"])
    failed = False

    def work() -> None:
        nonlocal failed
        from extract.core.errors import writing
        from extract.core.files import write_atomically
        from img_model.predict.manifest import read_manifest

        rows = read_manifest(manifest)  # a malformed manifest fails before torch and the model load
        from img_model.predict.batch import ANSWERS_FILE, REPORT_FILE, run_batch
        from img_model.predict.batch_report import batch_report

        with writing(f"--out {out}", out):
            out.mkdir(parents=True, exist_ok=True)
        predictor = _load(flags, progress=False)
        answers = out / ANSWERS_FILE
        with writing(f"--out {answers}", out):
            with open(answers, "w", encoding="utf-8") as handle:
                summary = run_batch(predictor, rows, handle, drop_audio=drop_audio)
            line = summary.line()
            write_atomically(out / REPORT_FILE, batch_report(summary.results, line, title))
        click.echo(line)
        click.echo(f"answers: {answers}; page: {out / REPORT_FILE}")
        failed = summary.failed > 0

    _one_line_errors(work)
    sys.exit(EXIT_FAILED if failed else 0)


@main.command(
    "serve",
    epilog="\b\nExit status: 0 stopped with Ctrl-C, 1 an internal error, 2 usage error (a port in use, a checkpoint "
    "or weights that do not fit).",
)
@click.option(
    "--videos",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Folder of videos to pick from; nothing outside it is served.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (only this machine by default). Requests must name it, localhost, 127.0.0.1, [::1] or an "
    "--allow-host name in their Host header.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    help="Another name the page may be reached by (repeatable), e.g. this machine's name or address with --host "
    "0.0.0.0. Other Host headers are refused (DNS rebinding).",
)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True, help="Port.")
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024, max=16 * 2**20),
    default=2**20,  # demo_server.MAX_BODY_BYTES, not imported here: FastAPI loads only for serve
    show_default=True,
    help="Largest request body the page's requests may send, 1 KiB to 16 MiB (a query is a few hundred bytes); "
    "a larger one is refused with 413 before it is read.",
)
@click.option(
    "--max-upload-bytes",
    type=click.IntRange(min=2**20, max=64 * 2**30),
    default=512 * 2**20,  # demo_server.MAX_UPLOAD_BYTES
    show_default=True,
    help="Largest video the page may upload, 1 MiB to 64 GiB; uploads are kept in --videos/uploads/ (never "
    "replacing a file) and must open as a video.",
)
@predictor_options
def serve_command(
    videos: Path,
    host: str,
    allow_hosts: tuple[str, ...],
    port: int,
    max_body_bytes: int,
    max_upload_bytes: int,
    **flags: Any,
) -> None:
    """A local demo page: pick a video from --videos (or upload one), type a query (and the true span, if known),
    see P(start) and P(end), the saliency and the waveform on a timeline, the fused, visual-only and audio-only
    spans side by side with their IoU, keyframes of the top spans, and play any span (stopping or looping at its
    end). The page's address holds the query: share it to ask again.

    \b
    Requests are answered one at a time per model (others wait in line; the page stays responsive). Only files
    under --videos are served: paths that leave it (../, encoded or not, or links to elsewhere) are refused, and
    so are requests whose Host header names another machine (a web page rebinding its name to this one), bodies
    over --max-body-bytes (before they are read) and queries over 1000 characters.

    \b
    Example:
      img-predict serve --checkpoint runs/charades/best.pt --videos ~/videos --port 8080
    """
    _setup_logging(flags["verbose"])

    def work() -> None:
        from img_model.predict.demo_server import create_app, host_names

        listening = _listen(host, port)  # before the model loads: a port in use fails at once
        predictor = _load(flags, progress=False)
        app = create_app(
            predictor,
            videos,
            allowed_hosts=[*host_names(host), *allow_hosts],
            max_body_bytes=max_body_bytes,
            max_upload_bytes=max_upload_bytes,
        )
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("--host %s: other machines can reach the page and every video under %s", host, videos)
        _serve(app, listening, _url(host, listening.getsockname()[1]), flags["verbose"])

    _one_line_errors(work)
    sys.exit(0)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn serves on it); a port in use is a one-line UsageError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as error:
        raise UsageError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        reason = "another program listens there" if error.errno == errno.EADDRINUSE else error.strerror
        raise UsageError(f"--port {port}: cannot listen on {host}:{port} ({reason}); pick another --port") from None
    return listening


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _serve(app: Any, listening: socket.socket, url: str, verbose: bool) -> None:
    """uvicorn on the bound socket; the page's address is logged once the server accepts requests."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            log.info("demo page on %s (Ctrl-C stops it)", url)

    Server(uvicorn.Config(app, log_level="info" if verbose else "warning")).run(sockets=[listening])


if __name__ == "__main__":
    main()
