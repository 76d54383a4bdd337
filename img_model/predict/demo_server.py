"""The local demo page of img-predict serve (FastAPI, run by uvicorn).

    GET  /                  the page (inline script and style: nothing is fetched from elsewhere)
    GET  /api/videos        {"videos": [paths relative to DIR], "top_k": k, "max_query_chars": n,
                             "max_upload_bytes": n}
    GET  /media/{path}      a video file under DIR (range requests, so the player can seek)
    POST /api/predict       {"video": path, "query": text, "top_k": k, optional "start"/"end" (the true span,
                             seconds) and "drop_audio": true} -> the Predictor's answer as JSON
    GET  /api/waveform?video=path        {"duration": s, "peaks": [[min, max], ...] | null (no audio)}
    GET  /api/keyframe?video=path&t=s    the frame shown at t, a JPEG 160 px wide (the top spans' thumbnails)
    POST /api/upload?name=file.mp4       the body is the video; kept under DIR/uploads/ -> {"video": its served
                                         path, "videos": the new list} (demo_media: never replaces a file)

Every error, every refusal included, is {"error": one line} with its status: 400 a bad query (empty, longer
than max_query_chars, or not valid text such as a lone UTF-16 surrogate) or a Host header that names another
machine, 404 no such video (or page), 413 a request body over the limit (an upload's is --max-upload-bytes),
415 an upload that is not a video (by its name's extension or by its content), 422 a video that fails to decode
or a malformed request (a true span must be finite, 0 <= start < end), 500 anything else. Video paths in answers
and errors are the names relative to DIR, never the server's own paths. A client's error is never logged with a
traceback; only a 500 is.

Only files under DIR are served: a requested path is resolved (links followed) and must stay inside DIR's own
resolved path, so `../`, its percent-encoded forms and links pointing out of DIR are all refused alike (404,
without saying whether the file exists). Requests must name this machine in their Host header (127.0.0.1,
localhost, [::1], or the names the server was started for): a web page elsewhere that rebinds its own domain to
127.0.0.1 (DNS rebinding) gets 400 and the names to use, not the videos (AllowedHosts).

Request bodies are limited while they arrive (RequestBodyLimit, 1 MiB by default: a prediction request is a
few hundred bytes), so a 40 MB body costs neither memory nor the model's time.

The model answers one request at a time, in the order they arrive: predictions run in a single-worker
executor, and the endpoint awaits its turn without holding a thread, so the page, the video list and the
media stay responsive however many predictions wait. A waiting request whose client has gone (a closed tab) is
dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from extract.core.errors import VideoDecodeError
from extract.media.sources import VIDEO_EXTENSIONS, video_files
from img_model.predict.demo_media import (
    UploadRefused,
    keep_upload,
    keyframe_jpeg,
    receive_upload,
    upload_name,
    waveform,
)
from img_model.predict.queries import QueryError

log = logging.getLogger(f"img_vmr.{__name__}")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there
CLIENT_GONE = 499  # the status logged for a request dropped because its client went away (nginx's)
MAX_BODY_BYTES = 2**20  # a prediction request is a few hundred bytes
MAX_QUERY_CHARS = 1000  # a long caption is ~300; the model reads only its first max_pos_len tokens anyway
MAX_VIDEO_CHARS = 4096  # the longest path Linux opens (PATH_MAX)
MAX_UPLOAD_BYTES = 512 * 2**20  # a few minutes of 1080p H.264
UPLOAD_FOLDER = "uploads"  # under the served folder: uploads are listed and served as its other videos


class PredictRequest(BaseModel):
    video: str
    query: str
    top_k: int = Field(default=5, ge=1, le=50)
    start: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # the true span, seconds (optional)
    end: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    drop_audio: bool = False  # also answer with the audio removed, as img-eval's missing audio

    @model_validator(mode="after")
    def _truth(self) -> PredictRequest:
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end: give both (the true span) or neither")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"start {self.start:g} s must be before end {self.end:g} s")
        return self

    def truth(self) -> tuple[float, float] | None:
        return None if self.start is None or self.end is None else (self.start, self.end)


def media_path(root: Path, requested: str) -> Path | None:
    """The video file `requested` (relative to root) names, or None when it is not a video file under root."""
    if not requested or "\0" in requested:
        return None
    try:
        path = (root / requested).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, or a name no file can have (a surrogate)
        return None
    if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in VIDEO_EXTENSIONS:
        return None
    return path


def list_videos(root: Path) -> list[str]:
    """Video files under root (links followed only where they stay inside root), as paths relative to it."""
    found = []
    for path in video_files(root):
        relative = path.relative_to(root).as_posix()
        if media_path(root, relative) is not None:
            found.append(relative)
    return found


def host_names(host: str) -> list[str]:
    """The Host header names of a server bound to `host`: this machine's, and `host` (an IPv6 address in
    brackets, as a Host header writes it)."""
    names = list(LOCAL_HOSTS)
    if host:
        names.append(f"[{host.strip('[]')}]" if ":" in host else host)
    return list(dict.fromkeys(name.lower() for name in names))


def _error(message: str, status: int) -> JSONResponse:
    # A 413 is answered before the body was read: the connection closes rather than reading the rest to reuse it.
    headers = {"Connection": "close"} if status == 413 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _host_name(header: str | None) -> str:
    """The name a Host header gives, without its port, lower case: 'LOCALHOST:8080' -> 'localhost',
    '[::1]:8080' -> '[::1]'; '' when there is none."""
    header = (header or "").strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]  # '' when the bracket is never closed
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class AllowedHosts:
    """ASGI middleware: answers only requests whose Host header names one of `names` (see host_names); any
    other gets 400 with a JSON error saying which names work and how to add one. Starlette's
    TrustedHostMiddleware does the same check but answers in plain text, which the page cannot show."""

    def __init__(self, app: ASGIApp, names: Sequence[str]) -> None:
        self.app, self.names = app, [name.lower() for name in names]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = _host_name(Headers(scope=scope).get("host")) if scope["type"] == "http" else None
        if host is None or host in self.names:  # the app has no websocket routes: lifespan is all else it gets
            await self.app(scope, receive, send)
        else:
            named = f"names {host[:100]!r}" if host else "names no host"
            message = (
                f"this server answers requests for {', '.join(self.names)}; this request's Host header "
                f"{named} (a page elsewhere may be rebinding its name to this machine); to reach the page "
                "by another name, start img-predict serve with --allow-host NAME"
            )
            await _error(message, 400)(scope, receive, send)


class BodyTooLarge(HTTPException):
    """A request body over its route's limit: raised by the receive of RequestBodyLimit while the body is read."""

    def __init__(self, limit: int, option: str) -> None:
        super().__init__(413, f"request body larger than {limit} bytes, this server's limit ({option})")


class RequestBodyLimit:
    """ASGI middleware: request bodies larger than `max_bytes` (set by the command-line `option`), or than a
    route's own limit in `route_limits` (path prefix -> (bytes, option)), are refused with 413 while they arrive,
    never after buffering them.

    A request whose Content-Length says more than the limit is answered at once: the app is not called and not
    one byte of the body is read. A body without a Content-Length (chunked) is counted as the app reads it: the
    read that takes the count past the limit raises BodyTooLarge inside the app, whose HTTPException handler
    answers 413, so the server holds at most the limit plus one network read of it (uvicorn stops reading
    from the socket while its buffer is full). Either way the connection is closed, not drained.

    A streamed upload reuses it as it is: give its route a larger limit (route_limits={"/api/upload": (size,
    "--max-upload-bytes")}), read `request.stream()` chunk by chunk into a temporary file, and remove that file
    when BodyTooLarge (or any error) ends the loop; the client gets the same 413 JSON line.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        option: str = "--max-body-bytes",
        route_limits: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app, self.default, self.route_limits = app, (max_bytes, option), dict(route_limits or {})

    def limit(self, path: str) -> tuple[int, str]:
        """(bytes, option) of the route at `path`."""
        return next((limit for prefix, limit in self.route_limits.items() if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, option = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _error(BodyTooLarge(limit, option).detail, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, option)
            return message

        await self.app(scope, counted, send)


def text_problem(field: str, text: str, most: int) -> str | None:
    """Why `text` (a request's `field`) cannot be used, as one line; None when it can. JSON may carry lone
    UTF-16 surrogates ("\\ud800"), which are no text: they could not even be written back in the answer."""
    if len(text) > most:
        return f"{field} too long: {len(text)} characters, at most {most}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = ord(text[error.start])
        return f"{field} is not valid text: a lone UTF-16 surrogate (U+{surrogate:04X}) at character {error.start + 1}"
    return None


def _validation_line(error: RequestValidationError) -> str:
    """Pydantic's errors as one line: "top_k: Input should be greater than or equal to 1"."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "malformed request"


def create_app(
    predictor: Any,
    videos: Path,
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_query_chars: int = MAX_QUERY_CHARS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The demo app for one Predictor and one folder of videos, answering requests whose Host is one of
    `allowed_hosts` (see host_names) and whose body is at most `max_body_bytes` (an upload's at most
    `max_upload_bytes`), queries of at most `max_query_chars` characters."""
    root = Path(videos).resolve(strict=True)
    uploads = root / UPLOAD_FOLDER
    model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="img-predict-model")  # one request at a time
    page = resources.files("img_model").joinpath("templates/demo.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        model.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="img-predict demo", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    upload_limit = {"/api/upload": (max_upload_bytes, "--max-upload-bytes")}
    app.add_middleware(RequestBodyLimit, max_bytes=max_body_bytes, route_limits=upload_limit)
    app.add_middleware(AllowedHosts, names=list(allowed_hosts))  # added last: it runs first
    app.state.waiting = 0  # predictions waiting for the model or running (for the log and the tests)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(_validation_line(error), 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(str(error.detail), error.status_code)

    @app.exception_handler(Exception)
    async def internal(_: Request, error: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(error).__name__, error, exc_info=error)
        return _error(f"internal error: {type(error).__name__}: {error}", 500)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/videos")
    def videos_list() -> dict[str, Any]:
        return {
            "videos": list_videos(root),
            "top_k": predictor.top_k,
            "max_query_chars": max_query_chars,
            "max_upload_bytes": max_upload_bytes,
        }

    def served_video(requested: str) -> Path:
        path = media_path(root, requested)
        if path is None:
            raise HTTPException(404, "no such video under the served folder")
        return path

    def video_problem(requested: str, error: VideoDecodeError) -> JSONResponse:
        return _error(str(error).replace(str(served_video(requested)), requested).replace(str(root) + "/", ""), 422)

    @app.get("/api/waveform")
    def waveform_peaks(video: str) -> Response:
        try:
            return JSONResponse(waveform(served_video(video)).as_json())
        except VideoDecodeError as error:
            return video_problem(video, error)

    @app.get("/api/keyframe")
    def keyframe(video: str, t: float = Query(ge=0, allow_inf_nan=False)) -> Response:
        try:
            return Response(keyframe_jpeg(served_video(video), t), media_type="image/jpeg")
        except VideoDecodeError as error:
            return video_problem(video, error)

    @app.post("/api/upload")
    async def upload(request: Request, name: str) -> Response:
        try:
            kept_name = upload_name(name)
            part = await receive_upload(uploads, request.stream())
            kept = await run_in_threadpool(keep_upload, part, kept_name)
        except UploadRefused as error:
            return _error(str(error), 415)
        except ClientDisconnect:
            return Response(status_code=CLIENT_GONE)
        except OSError as error:  # a read-only served folder, a full disk: the server's, said without its paths
            log.error("cannot keep an upload in %s: %s", uploads, error)
            return _error(f"cannot keep the upload in the served folder's {UPLOAD_FOLDER}/: {error.strerror}", 500)
        served = kept.relative_to(root).as_posix()
        log.info("upload kept as %s (%d bytes)", served, kept.stat().st_size)
        return JSONResponse({"video": served, "videos": list_videos(root)})

    @app.get("/media/{requested:path}", response_model=None)
    def media(requested: str) -> FileResponse | JSONResponse:
        path = media_path(root, requested)
        if path is None:
            return _error("no such video under the served folder", 404)
        return FileResponse(path)

    @app.post("/api/predict")
    async def predict(request: PredictRequest, connection: Request) -> Response:
        problem = text_problem("video", request.video, MAX_VIDEO_CHARS) or text_problem(
            "query", request.query, max_query_chars
        )
        if problem is not None:
            return _error(problem, 400)
        path = media_path(root, request.video)
        if path is None:
            return _error(f"no video {request.video!r} under the served folder", 404)

        def served_name(text: str) -> str:  # the name the page knows, never the server's path
            return text.replace(str(path), request.video).replace(str(root) + "/", "")

        app.state.waiting += 1
        try:
            queued = model.submit(
                predictor.predict,
                path,
                [request.query],
                request.top_k,
                truths=[request.truth()],
                drop_audio=request.drop_audio,
            )
            job = asyncio.wrap_future(queued)
            while not (await asyncio.wait({job}, timeout=DISCONNECT_POLL_SECONDS))[0]:
                if await connection.is_disconnected() and queued.cancel():  # False once it runs: it finishes
                    log.info("%s: %r dropped before it ran: its client went away", request.video, request.query)
                    return Response(status_code=CLIENT_GONE)
            try:
                answers = job.result()
            except QueryError as error:
                return _error(str(error), 400)
            except VideoDecodeError as error:
                return _error(served_name(str(error)), 422)
            except Exception as error:  # anything else: the same JSON shape, and the server keeps serving
                log.error("%s: %r: %s: %s", request.video, request.query, type(error).__name__, error, exc_info=True)
                return _error(served_name(f"internal error: {type(error).__name__}: {error}"), 500)
        finally:
            app.state.waiting -= 1
        result = answers.as_json()
        result["video"] = request.video  # the served name, not the server's path
        result["note"] = served_name(result["note"])
        return JSONResponse(result)

    return app
