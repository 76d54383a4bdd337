"""The local demo page of img-predict serve (FastAPI, run by uvicorn).

    GET  /                  the page (inline script and style: nothing is fetched from elsewhere)
    GET  /api/videos        {"videos": [paths relative to DIR], "top_k": k}
    GET  /media/{path}      a video file under DIR (range requests, so the player can seek)
    POST /api/predict       {"video": path, "query": text, "top_k": k} -> the Predictor's answer as JSON

Every error is {"error": one line} with its status: 400 a bad query, 404 no such video (or page), 422 a video
that fails to decode or a malformed request, 500 anything else. Video paths in answers and errors are the
names relative to DIR, never the server's own paths.

Only files under DIR are served: a requested path is resolved (links followed) and must stay inside DIR's own
resolved path, so `../`, its percent-encoded forms and links pointing out of DIR are all refused alike (404,
without saying whether the file exists). Requests must name this machine in their Host header (127.0.0.1,
localhost, [::1], or the names the server was started for): a web page elsewhere that rebinds its own domain to
127.0.0.1 (DNS rebinding) gets 400 "Invalid host header" (Starlette's TrustedHostMiddleware), not the videos.

The model answers one request at a time, in the order they arrive: predictions run in a single-worker
executor, and the endpoint awaits its turn without holding a thread, so the page, the video list and the
media stay responsive however many predictions wait. A waiting request whose client has gone (a closed tab) is
dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from extract.core.errors import VideoDecodeError
from extract.media.sources import VIDEO_EXTENSIONS, video_files
from img_model.predict.queries import QueryError

log = logging.getLogger(f"img_vmr.{__name__}")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there
CLIENT_GONE = 499  # the status logged for a request dropped because its client went away (nginx's)


class PredictRequest(BaseModel):
    video: str
    query: str
    top_k: int = Field(default=5, ge=1, le=50)


def media_path(root: Path, requested: str) -> Path | None:
    """The video file `requested` (relative to root) names, or None when it is not a video file under root."""
    if not requested or "\0" in requested:
        return None
    try:
        path = (root / requested).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a link loop
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
    return JSONResponse({"error": message}, status_code=status)


def _validation_line(error: RequestValidationError) -> str:
    """Pydantic's errors as one line: "top_k: Input should be greater than or equal to 1"."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
    return "; ".join(parts) or "malformed request"


def create_app(predictor: Any, videos: Path, allowed_hosts: Sequence[str] = LOCAL_HOSTS) -> FastAPI:
    """The demo app for one Predictor and one folder of videos, answering requests whose Host is one of
    `allowed_hosts` (see host_names)."""
    root = Path(videos).resolve(strict=True)
    model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="img-predict-model")  # one request at a time
    page = resources.files("img_model").joinpath("templates/demo.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        model.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="img-predict demo", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
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
        return {"videos": list_videos(root), "top_k": predictor.top_k}

    @app.get("/media/{requested:path}", response_model=None)
    def media(requested: str) -> FileResponse | JSONResponse:
        path = media_path(root, requested)
        if path is None:
            return _error("no such video under the served folder", 404)
        return FileResponse(path)

    @app.post("/api/predict")
    async def predict(request: PredictRequest, connection: Request) -> Response:
        path = media_path(root, request.video)
        if path is None:
            return _error(f"no video {request.video!r} under the served folder", 404)

        def served_name(text: str) -> str:  # the name the page knows, never the server's path
            return text.replace(str(path), request.video).replace(str(root) + "/", "")

        app.state.waiting += 1
        try:
            queued = model.submit(predictor.predict, path, [request.query], request.top_k)
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
