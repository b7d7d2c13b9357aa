"""``twotower-serve EXPORT_DIR``: an HTTP retrieval service over an export (FastAPI on uvicorn).

The export is loaded and checked once, at start-up (a broken one is refused with one line,
exit status 2, before the port is opened); every request is answered by the same
:class:`~twotower.retrieval.Retriever` as ``twotower-retrieve``:

- ``POST /recommend`` ``{"user_id": ID | "features": {...}, "k": 10, "exclude_seen": true}``
- ``POST /recommend/batch`` ``{"users": [{"user_id": ...} | {"features": {...}}, ...], "k", "exclude_seen"}``:
  one tower pass and one index search for the whole batch
- ``GET /similar/{item_id}?k=10``, ``GET /health``, ``GET /metadata``

Errors are JSON ``{"error": "one line"}`` with a 4xx status: 400 malformed JSON, 404 an
unknown user (without features) or item, 413 a body over the limit, 415 a body that is not
JSON, 422 wrong types or values (``k`` over ``--max-k``, a batch over ``--max-batch``). Binds 127.0.0.1 unless told
otherwise; host, port, workers and threads from flags or ``TWOTOWER_SERVE_*``.
"""

# No `from __future__ import annotations`: FastAPI reads the request models of the endpoints
# below from their annotations, which must be the classes themselves (they are local to
# create_app, which sets their limits).
import argparse
import os
import signal
import sys
from typing import Any

from twotower.cli import is_refusal, report

ENV = "TWOTOWER_SERVE_"
DEFAULTS = {"host": "127.0.0.1", "port": 8000, "workers": 1, "threads": 1, "max_k": 1000, "max_batch": 1000, "max_body_bytes": 1 << 20}


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before it is parsed,
    whether its length is declared (``Content-Length``) or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        try:
            return await self.app(scope, counted, send)
        except _TooLarge:
            return await self._too_large(send)

    async def _too_large(self, send):
        from starlette.responses import JSONResponse

        response = JSONResponse({"error": f"request body over {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass


def create_app(export_dir: str | None = None, max_k: int | None = None, max_batch: int | None = None, max_body_bytes: int | None = None):
    """The FastAPI application over ``export_dir`` (default: ``$TWOTOWER_SERVE_EXPORT``, how
    each uvicorn worker process finds it). Loads and checks the export now."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

    from twotower.retrieval import Retriever

    export_dir = export_dir or os.environ[f"{ENV}EXPORT"]
    max_k = max_k or setting("max_k")
    max_batch = max_batch or setting("max_batch")
    max_body_bytes = max_body_bytes or setting("max_body_bytes")
    if os.environ.get(f"{ENV}THREADS"):  # a worker process of `--workers N`
        set_threads(int(os.environ[f"{ENV}THREADS"]))
    retriever = Retriever(export_dir)

    Value = str | int | float | None

    class User(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: str | StrictInt | None = None
        features: dict[str, Value] | None = None

    class RecommendRequest(User):
        k: StrictInt = Field(10, ge=1, le=max_k)
        exclude_seen: StrictBool = True

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        users: list[User] = Field(min_length=1, max_length=max_batch)
        k: StrictInt = Field(10, ge=1, le=max_k)
        exclude_seen: StrictBool = True

    class NotFound(Exception):
        pass

    app = FastAPI(title="twotower", version=retriever.metadata()["package_version"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": f"malformed JSON: {first.get('msg')}"}, status_code=400)
        if tuple(first.get("loc", ())) == ("body",):  # not a JSON object at all
            if "json" not in request.headers.get("content-type", ""):
                return JSONResponse({"error": "expected a JSON body with Content-Type: application/json"}, status_code=415)
            return JSONResponse({"error": 'body: expected a JSON object, e.g. {"user_id": "1", "k": 10}'}, status_code=422)
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg')}", "detail": jsonable(err.errors())}, status_code=422)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound):
        return JSONResponse({"error": str(err)}, status_code=404)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, err: ValueError):
        return JSONResponse({"error": str(err)}, status_code=422)

    def split(users: list[User]) -> tuple[list[str], list[dict], list[tuple[str, int]]]:
        """Known ids and new users' features, and where each request's answer comes from."""
        known, new, order = [], [], []
        for user in users:
            user_id = None if user.user_id is None else str(user.user_id)
            if user_id is not None and user_id in retriever.user_row:
                order.append(("known", len(known)))
                known.append(user_id)
            elif user.features is not None:
                order.append(("new", len(new)))
                new.append({name: None if v is None else str(v) for name, v in user.features.items()})
            elif user_id is not None:
                raise NotFound(f"unknown user_id {user_id!r}: not a user of this model; give its features to encode it as a new user")
            else:
                raise ValueError("a user needs a user_id or features")
        return known, new, order

    def answer(users: list[User], k: int, exclude_seen: bool) -> list[dict]:
        known, new, order = split(users)
        results = retriever.recommend(known, new, k, exclude_seen)
        offset = {"known": 0, "new": len(known)}
        return [{"user_id": None if u.user_id is None else str(u.user_id), "new_user": kind == "new", "items": results[offset[kind] + i]}
                for u, (kind, i) in zip(users, order)]  # fmt: skip

    # The endpoints compute inline (async, no thread hop): a known user's answer is one index
    # search of a fraction of a millisecond, and with one process the GIL serializes the work
    # anyway. Their dicts go out as JSON directly, without FastAPI's per-field re-encoding.
    @app.post("/recommend")
    async def recommend(request: RecommendRequest) -> JSONResponse:
        return JSONResponse(answer([request], request.k, request.exclude_seen)[0])

    @app.post("/recommend/batch")
    async def recommend_batch(request: BatchRequest) -> JSONResponse:
        return JSONResponse({"results": answer(request.users, request.k, request.exclude_seen)})

    @app.get("/similar/{item_id}")
    async def similar(item_id: str, k: int = Query(10, ge=1, le=max_k)) -> JSONResponse:
        try:
            return JSONResponse({"item_id": item_id, "items": retriever.similar(item_id, k)})
        except KeyError as err:
            raise NotFound(err.args[0]) from None

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        limits = {"max_k": max_k, "max_batch": max_batch, "max_body_bytes": max_body_bytes}
        return JSONResponse({**retriever.metadata(), "limits": limits})

    return BodyLimit(app, max_body_bytes)


def jsonable(errors: list[dict]) -> list[dict]:
    """Pydantic's error records without their exception objects (not JSON)."""
    return [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]


def setting(name: str, given: Any = None) -> Any:
    """A flag's value, else ``TWOTOWER_SERVE_<NAME>``, else the default."""
    if given is not None:
        return given
    raw = os.environ.get(f"{ENV}{name.upper()}")
    default = DEFAULTS[name]
    if raw is None:
        return default
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"{ENV}{name.upper()}={raw!r}: expected {type(default).__name__}") from None


def set_threads(threads: int) -> None:
    """Torch's and FAISS's threads in this process: one each by default, so that the
    server's request threads, not the math libraries, share the cores."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def serve_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twotower-serve", description="Serve an export over HTTP (FastAPI on uvicorn).")
    p.add_argument("export_dir")
    p.add_argument("--host", help=f"address to bind (default {DEFAULTS['host']}: this machine only; env {ENV}HOST)")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULTS['port']}; env {ENV}PORT)")
    p.add_argument("--workers", type=int, help=f"worker processes, each with the export loaded (default 1; env {ENV}WORKERS)")
    p.add_argument("--threads", type=int, help=f"torch and FAISS threads per worker (default 1; env {ENV}THREADS)")
    p.add_argument("--max-k", type=int, help=f"largest k a request may ask for (default {DEFAULTS['max_k']})")
    p.add_argument("--max-batch", type=int, help=f"most users in one batch request (default {DEFAULTS['max_batch']})")
    p.add_argument("--max-body-bytes", type=int, help=f"largest request body (default {DEFAULTS['max_body_bytes']})")
    args = p.parse_args(argv)
    try:
        values = {name: setting(name, getattr(args, name)) for name in DEFAULTS}
        small = [f"--{n.replace('_', '-')}={v}" for n, v in values.items() if n != "host" and v < (0 if n == "port" else 1)]
        if small:
            raise ValueError(f"{', '.join(small)}: expected positive numbers")
        set_threads(values["threads"])
        limits = {n: values[n] for n in ("max_k", "max_batch", "max_body_bytes")}
        app = create_app(args.export_dir, **limits)  # refuses a broken export before the port opens
    except Exception as err:
        if not is_refusal(err):
            raise
        return report(p.prog, err)
    import uvicorn

    print(f"twotower-serve: {args.export_dir} on http://{values['host']}:{values['port']} ({values['workers']} worker(s))", file=sys.stderr)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM (no new connections, requests in flight
    # answered), then raises the signal again for the handler it found: this one.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopped)
    try:
        if values["workers"] == 1:
            uvicorn.run(app, host=values["host"], port=values["port"], log_level="warning")
        else:  # each worker process imports the factory and loads the export itself
            os.environ.update({f"{ENV}EXPORT": str(args.export_dir), **{f"{ENV}{n.upper()}": str(v) for n, v in limits.items()},
                               f"{ENV}THREADS": str(values["threads"])})  # fmt: skip
            uvicorn.run("twotower.serve:create_app", factory=True, host=values["host"], port=values["port"],
                        workers=values["workers"], log_level="warning")  # fmt: skip
    except _Stopped:
        pass
    print("twotower-serve: stopped", file=sys.stderr)
    return 0


class _Stopped(Exception):
    pass


def _stopped(signum, frame) -> None:
    raise _Stopped(signum)


if __name__ == "__main__":
    sys.exit(serve_main())
