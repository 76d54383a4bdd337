"""The local demo page of img-predict serve (FastAPI, run by uvicorn).

    GET  /                  the page (inline script and style: nothing is fetched from elsewhere)
    GET  /api/videos        {"videos": [paths relative to DIR]}
    GET  /media/{path}      a video file under DIR (range requests, so the player can seek)
    POST /api/predict       {"video": path, "query": text, "top_k": k} -> the Predictor's answer as JSON,
                            or {"error": one line} with status 400 (bad query) / 404 (no such video) / 422

Only files under DIR are served: a requested path is resolved (links followed) and must stay inside DIR's own
resolved path, so `../`, its percent-encoded forms and links pointing out of DIR are all refused alike (404,
without saying whether the file exists). The model answers one request at a time: requests run in the server's
thread pool and wait for the model's lock, in the order they arrive.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from extract.errors import ImgVmrError, VideoDecodeError
from extract.sources import VIDEO_EXTENSIONS, video_files
from img_model.errors import QueryError

log = logging.getLogger("img_vmr.predict")


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


def create_app(predictor: Any, videos: Path) -> FastAPI:
    """The demo app for one Predictor and one folder of videos."""
    root = Path(videos).resolve(strict=True)
    model_lock = threading.Lock()
    page = resources.files("img_model").joinpath("templates/demo.html").read_text(encoding="utf-8")
    app = FastAPI(title="img-predict demo", docs_url=None, redoc_url=None, openapi_url=None)

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
            return JSONResponse({"error": "no such video under the served folder"}, status_code=404)
        return FileResponse(path)

    @app.post("/api/predict")
    def predict(request: PredictRequest) -> JSONResponse:
        path = media_path(root, request.video)
        if path is None:
            return JSONResponse({"error": f"no video {request.video!r} under the served folder"}, status_code=404)
        with model_lock:  # one request at a time per model; the others wait here
            try:
                answers = predictor.predict(path, [request.query], request.top_k)
            except QueryError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            except VideoDecodeError as error:
                return JSONResponse({"error": str(error).replace(str(root) + "/", "")}, status_code=422)
            except ImgVmrError as error:
                log.warning("%s", error)
                return JSONResponse({"error": str(error)}, status_code=500)
        result = answers.as_json()
        result["video"] = request.video  # the served name, not the server's path
        return JSONResponse(result)

    return app
