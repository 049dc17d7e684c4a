"""The HTTP service: FastAPI routes over a `Searcher`, with every bad input answered by a 4xx JSON error.

Why FastAPI + uvicorn: an ASGI server keeps thousands of slow clients (uploads) on one event loop while the model
work runs on its own thread (`search.ModelWorker`) in shared batches; FastAPI adds routing and the OpenAPI page
(`/docs`) for free. Bodies are read by hand with a byte cap before anything is parsed (so an oversized upload is
refused at the limit, never buffered whole), JSON is validated here field by field (so the error names the field),
and multipart uploads are parsed in memory (so nothing is spooled to the system's temp folder: the only file the
service writes is the upload's transient copy under INDEX/uploads/).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagebert.serve.search import Searcher

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@dataclass
class Limits:
    max_query_chars: int = 500
    max_top_k: int = 100
    max_rerank: int = 200
    default_top_k: int = 10
    default_rerank: int = 20
    max_json_bytes: int = 64 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, f"Content-Length {length!r} is not a number") from None
        if n > limit:
            raise ApiError(413, f"{what} is {n} bytes, over the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> dict:
    if not body.strip():
        raise ApiError(400, "empty request body: send a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}")
    return data


def _int_field(data: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = data.get(name, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # form fields arrive as text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"{name} must be an integer, got {value!r}", name)
    if not lo <= value <= hi:
        raise ApiError(422, f"{name} must be between {lo} and {hi}, got {value}", name)
    return value


def _check_keys(data: dict, allowed: set[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ApiError(
            422, f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}", extra[0]
        )


def _image_id(value: Any, searcher: Searcher, name: str = "image_id") -> int:
    from imagebert.data.store import validate_image_id
    from imagebert.errors import InputError

    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ApiError(422, f"{name} must be a string", name)
    try:
        iid = validate_image_id(str(value), field=name)
    except InputError as exc:
        raise ApiError(400, f"invalid image id {str(value)!r}: {exc.reason}", name) from None
    if iid not in searcher.index.ordinal:
        raise ApiError(404, f"unknown image id {iid!r}: not in this index", name)
    return searcher.index.ordinal[iid]


def _parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes), parsed in memory with python-multipart's streaming parser."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary in Content-Type")
    parts: dict[str, tuple[str | None, bytes]] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": []}

    def on_part_begin() -> None:
        state.update(headers={}, data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        disp, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name")
        if name is None:
            raise ApiError(400, "multipart part without a name")
        filename = opts.get(b"filename")
        parts[name.decode("utf-8", "replace")] = (
            None if filename is None else filename.decode("utf-8", "replace"),
            b"".join(state["data"]),
        )

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_part_end": on_part_end}  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    return parts


def create_app(searcher: Searcher, *, uploads: Any = None, limits: Limits | None = None,
               info: dict | None = None) -> FastAPI:  # fmt: skip
    """The application. `uploads` is an `upload.UploadExtractor` (None: uploads are refused with a reason)."""
    lim = limits or Limits()
    app = FastAPI(title="imagebert search", version="1")
    app.state.searcher = searcher
    started = time.time()

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"no such page or endpoint: {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))  # fmt: skip
        return _error(exc.status_code, msg)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return _error(
            422, first.get("msg", "invalid request"), ".".join(map(str, first.get("loc", []))) or None
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}): {exc}")

    def _query_params(data: dict) -> tuple[int, int]:
        top_k = _int_field(data, "top_k", lim.default_top_k, 1, lim.max_top_k)
        rerank = _int_field(data, "rerank", lim.default_rerank, 0, lim.max_rerank)
        return top_k, rerank

    @app.get("/health")
    async def health() -> dict:
        idx = searcher.index
        return {"status": "ok", "images": idx.num_images, "captions": idx.num_captions,
                "backend": searcher.image_search.name, "device": str(searcher.worker.device),
                "precision": searcher.worker.precision, "weights": searcher.worker.weights,
                "checkpoint_sha256": idx.meta["checkpoint"]["fingerprint"], "uploads": uploads is not None,
                "uptime_s": round(time.time() - started, 1), "batches": searcher.worker.batches,
                "largest_batch": searcher.worker.largest_batch,
                "limits": {**lim.__dict__}, **(info or {})}  # fmt: skip

    @app.post("/search/images")
    async def search_images(request: Request) -> dict:
        data = _parse_json(await _read_body(request, lim.max_json_bytes, "the JSON body"))
        _check_keys(data, {"query", "top_k", "rerank"})
        query = data.get("query")
        if not isinstance(query, str):
            raise ApiError(422, "query must be a string" if "query" in data else "query is missing", "query")
        if not query.strip():
            raise ApiError(422, "query is empty", "query")
        if len(query) > lim.max_query_chars:
            raise ApiError(422, f"query is {len(query)} characters, over the limit of {lim.max_query_chars}",
                           "query")  # fmt: skip
        top_k, rerank = _query_params(data)
        out = await run_in_threadpool(searcher.search_images, query.strip(), top_k, rerank)
        return {"query": query, "request_id": uuid.uuid4().hex, "top_k": top_k, **out}

    @app.post("/search/captions")
    async def search_captions(request: Request) -> dict:
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            parts = _parse_multipart(await _read_body(request, lim.max_upload_bytes, "the upload"), ctype)
            fields = {k: v[1].decode("utf-8", "replace") for k, v in parts.items() if k != "file"}
            _check_keys(fields, {"top_k", "rerank", "image_id"})
            top_k, rerank = _query_params(fields)
            if "file" in parts:
                return await _upload_search(parts["file"][1], top_k, rerank)
            if "image_id" in fields:
                return await _id_search(fields["image_id"], top_k, rerank)
            raise ApiError(422, "send an image in the form field 'file' (or an image_id)", "file")
        if ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
            data = await _read_body(request, lim.max_upload_bytes, "the upload")
            top_k, rerank = _query_params(dict(request.query_params))
            return await _upload_search(data, top_k, rerank)
        data = _parse_json(await _read_body(request, lim.max_json_bytes, "the JSON body"))
        _check_keys(data, {"image_id", "top_k", "rerank"})
        if "image_id" not in data:
            raise ApiError(
                422, "image_id is missing (or upload an image as multipart field 'file')", "image_id"
            )
        top_k, rerank = _query_params(data)
        return await _id_search(data["image_id"], top_k, rerank)

    async def _id_search(value: Any, top_k: int, rerank: int) -> dict:
        i = _image_id(value, searcher)
        out = await run_in_threadpool(lambda: searcher.search_captions(image=i, top_k=top_k, rerank=rerank))
        meta = searcher.index.images[i]
        return {"query": {"image_id": meta["id"], "width": meta["width"], "height": meta["height"],
                          "boxes": meta["boxes"]}, "request_id": uuid.uuid4().hex, "top_k": top_k, **out}  # fmt: skip

    async def _upload_search(data: bytes, top_k: int, rerank: int) -> dict:
        from imagebert.serve.upload import UploadRejected

        if uploads is None:
            raise ApiError(422, "this index cannot embed uploads: its features were not made by `imagebert "
                                "extract` (no extraction settings); search by image_id instead", "file")  # fmt: skip
        if not data:
            raise ApiError(400, "the uploaded file is empty", "file")
        t0 = time.perf_counter()
        try:
            record = await run_in_threadpool(uploads.extract, data)
        except UploadRejected as exc:
            raise ApiError(exc.status, exc.message, "file") from None
        t_ex = 1000 * (time.perf_counter() - t0)
        out = await run_in_threadpool(
            lambda: searcher.search_captions(record=record, top_k=top_k, rerank=rerank)
        )
        out["timings_ms"] = {"extract": t_ex, **out["timings_ms"], "total": out["timings_ms"]["total"] + t_ex}
        return {"query": {"upload": True, "width": record.image_width, "height": record.image_height,
                          "boxes": record.boxes.round(1).tolist()}, "request_id": uuid.uuid4().hex,
                "top_k": top_k, **out}  # fmt: skip

    @app.get("/images/{image_id:path}")
    async def image(image_id: str) -> Response:
        i = _image_id(image_id, searcher)
        path = searcher.index.thumb_path(i)
        if path is None or not path.is_file():
            raise ApiError(404, f"no picture stored for image {image_id!r} (the index was built without "
                                "--images)", "image_id")  # fmt: skip
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise ApiError(404, f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC_FILES[name])

    return app


def _static(name: str) -> str:
    return resources.files("imagebert.serve").joinpath("static", name).read_text(encoding="utf-8")


class ServerThread:
    """A real uvicorn server on a background thread (tests, benchmarks): `with ServerThread(app) as url: ...`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off", access_log=False))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def load_service(index_dir: str | Path, checkpoint: str | Path, *, device: str = "cpu", precision: str = "auto",
                 backend: str | None = None, batch_size: int = 64, max_batch_pairs: int = 1024,
                 max_wait_ms: float = 2.0, max_pixels: int | None = None, limits: Limits | None = None,
                 uploads: bool = True, weights: str = "fp32") -> tuple[FastAPI, Searcher]:  # fmt: skip
    """Index + checkpoint -> (app, searcher). Refuses a checkpoint other than the index's, or untrained ITC."""
    from imagebert.extraction.images import DEFAULT_MAX_PIXELS
    from imagebert.retrieval.evaluate import load_retrieval_model
    from imagebert.serve.index import GalleryIndex, check_checkpoint, require_trained_projections
    from imagebert.serve.search import ModelWorker
    from imagebert.serve.upload import UploadExtractor

    index = GalleryIndex(index_dir)
    check_checkpoint(index.meta, checkpoint)
    model, collator = load_retrieval_model(checkpoint, device)
    require_trained_projections(model.config, checkpoint)
    worker = ModelWorker(model, collator, device=device, precision=precision, batch_size=batch_size,
                         max_batch_pairs=max_batch_pairs, max_wait_ms=max_wait_ms, weights=weights)  # fmt: skip
    searcher = Searcher(index, worker, backend=backend)
    extractor = None
    if uploads and index.meta.get("extraction"):
        extractor = UploadExtractor(index.meta["extraction"], index.path / "uploads", device=device,
                                    max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                                    expected_dim=int(model.config.visual_feature_dim))  # fmt: skip
    app = create_app(searcher, uploads=extractor, limits=limits)
    return app, searcher
