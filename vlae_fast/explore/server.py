"""`vlae explore`: the explorer page and its JSON API on starlette, served by uvicorn (the `explore` extra).

    GET  /                        the page (static/index.html; explore.js and explore.css under /static)
    GET  /api/info                the model: levels and their widths, control name, image shape, test images
    POST /api/decode              {"controls": [[...], ...]} -> {"image": PNG data URL}
    GET  /api/prior?seed=S        one prior draw of every level's control
    GET  /api/posterior?index=I   test image I and the controls of its posterior means
    POST /api/encode              an image file's bytes (at most 4 MiB) -> the same for that image

A value out of range, a wrong shape, a body too large or a file that is not an image gets a 4xx answer with
{"error": message}; nothing answers with a traceback. Requests naming another host are refused (a web page
elsewhere cannot reach the server through DNS rebinding).
"""
from __future__ import annotations

import socket
from pathlib import Path

from ..checkpoint import load_model
from ..data import load_for_checkpoint
from ..errors import ConfigError, VlaeError
from .inputs import MAX_BYTES, InputError
from .session import MAX_JSON_BYTES, Explorer

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _starlette():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("`vlae explore` needs the explore extra: pip install 'vlae-fast[explore]' "
                          "(starlette and uvicorn)") from None


def load_explorer(ckpt: str | Path, device: str = "cpu", data_dir: str | Path | None = None) -> Explorer:
    """The checkpoint's model, loaded once, and its test split where it can be read (else the page
    says why and offers prior draws and uploads only)."""
    model, info = load_model(ckpt, device)
    try:
        test, why = load_for_checkpoint(info, "test", data_dir), ""
    except VlaeError as e:
        test, why = None, str(e)
    return Explorer(model, Path(ckpt).name, test, why)


def make_app(explorer: Explorer, allowed_hosts: list[str] | None = None):
    """The starlette app serving `explorer`. allowed_hosts: Host header names accepted (default loopback)."""
    _starlette()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def body(request: Request, limit: int) -> bytes:
        """The request body, refused (413) past `limit` bytes, before reading it all where the length is declared."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise InputError(f"request body of {declared[:20]} bytes; the limit is {limit}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError(f"request body over {limit} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def answer(data: dict) -> JSONResponse:
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    async def info(request: Request):
        return answer(explorer.info())

    async def decode(request: Request):
        return answer(await run_in_threadpool(explorer.decode, await body(request, MAX_JSON_BYTES)))

    async def prior(request: Request):
        return answer(await run_in_threadpool(explorer.prior, request.query_params.get("seed")))

    async def posterior(request: Request):
        return answer(await run_in_threadpool(explorer.posterior, request.query_params.get("index")))

    async def encode(request: Request):
        return answer(await run_in_threadpool(explorer.upload, await body(request, MAX_BYTES)))

    async def input_error(request: Request, e: InputError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    async def http_error(request: Request, e: HTTPException):
        return JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)

    routes = [
        Route("/", page), Route("/api/info", info), Route("/api/decode", decode, methods=["POST"]),
        Route("/api/prior", prior), Route("/api/posterior", posterior), Route("/api/encode", encode, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    hosts = allowed_hosts or list(LOOPBACK)
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                     exception_handlers={InputError: input_error, HTTPException: http_error})


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000, on_ready=None) -> None:
    """Serve until Ctrl-C. on_ready(url) is called once the socket listens."""
    _starlette()
    import uvicorn

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535; got {port}")
    try:  # fail with one clear line before uvicorn starts (it would log and exit on its own)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    hosts = list(LOOPBACK) if host in LOOPBACK else ["*"]  # bound elsewhere on purpose: any name reaches it
    config = uvicorn.Config(make_app(explorer, hosts), host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host

    async def startup(sockets=None):  # uvicorn's own startup, then tell the user where to go
        await original(sockets)
        if server.started and on_ready is not None:
            on_ready(f"http://{shown}:{port}/")

    original, server.startup = server.startup, startup
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind after all (a race with another program)
        pass
    if not server.started:
        raise ConfigError(f"cannot listen on {host}:{port}; is the port taken? choose another --port")
