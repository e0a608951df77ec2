"""`singularity-ops serve`: the knowledge base for agents, over MCP (stdio or streamable HTTP)
and a plain JSON API, with the model warm and a connection pool open.

Every face calls the same library functions through `Knowledge`, which is the Python API's
api.KnowledgeBase over a connection pool (the CLI uses that class too), so results have the
shapes `--json` prints. The server keeps no state of its own: tokens, usage
and the search log live in PostgreSQL, so replicas behind a load balancer agree.

    from singularity_ops.server import Knowledge, build_mcp
    with Knowledge.open(settings) as kb:
        server = build_mcp(kb)          # an mcp.server.mcpserver.MCPServer
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from pydantic import Field  # tool signatures name it; mcp evaluates them here

from .api import DEFAULT_LIMIT, KnowledgeBase
from .artifacts import LATEST, ArtifactNotFound, ArtifactView
from .config import Settings
from .errors import (
    ConfigError,
    DatabaseUnavailable,
    ServeError,
    SingularityOpsError,
    explain_db_error,
)
from .search import DEFAULT_MODE, SearchResult, SearchUnavailable, check_search
from .search_log import SearchNotFound
from .shapes import to_jsonable
from .tokens import TokenInfo, verify_token
from .usage_ingest import BatchResult, UsageResult
from .usage_report import UsageReport

log = logging.getLogger("singularity_ops.server")

T = TypeVar("T")
DEFAULT_PORT = 8765
# Reads and writes of the server's connections; search sets its own, tighter, per statement.
STATEMENT_TIMEOUT_MS = 10_000
MAX_BODY_BYTES = 1_000_000
LOOPBACK_NAMES = ("localhost",)

INSTRUCTIONS = """\
This server is the team's curated knowledge base: patterns, templates and prompts that worked.
The loop: `search` with what you need (in your own words) -> `get_artifact` for the hit you
will use -> use it -> `record_usage` with success true or false, passing the `search_id` that
`search` returned, so that ranking learns which results help. Report failures too: they
matter as much as successes. Use a stable `event_id` per use so retries are not counted twice.
"""


# --- the shared, warm state --------------------------------------------------------------


class Knowledge(KnowledgeBase):
    """What every face of the server shares: api.KnowledgeBase over a connection pool, with
    the embedding provider loaded once and kept warm."""

    def __init__(self, settings: Settings, pool: Any, provider: Any, read_only: bool) -> None:
        super().__init__(settings, provider=provider, read_only=read_only)
        self.pool = pool

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        pool_size: int = 8,
        read_only: bool = False,
        warm: bool = True,
        provider: Any = None,
    ) -> Knowledge:
        """Check the database like `search` does (cheap, first), then open the pool and load
        the model once; warm=True also answers one query so the first agent waits for nothing."""
        from psycopg_pool import ConnectionPool

        from .db import _register_vector, connect
        from .providers import make_provider

        with connect(settings, autocommit=True) as conn:  # the local-cluster identity check too
            check_search(conn, settings.embedding)

        def configure(conn: psycopg.Connection) -> None:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),)
            )
            _register_vector(conn)

        params = {**settings.conninfo(), "autocommit": True}
        params["application_name"] = "singularity-ops serve"
        pool = ConnectionPool(
            kwargs=params,
            min_size=min(2, pool_size),
            max_size=pool_size,
            configure=configure,
            timeout=10,
            name="singularity-ops",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=settings.connect_timeout + 5)
            knowledge = cls(
                settings,
                pool,
                provider or make_provider(settings.embedding, serving=True),
                read_only,
            )
            if warm:
                knowledge.provider.embed(["warm up"])
        except BaseException:
            pool.close()
            raise
        return knowledge

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Knowledge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """A connection of the pool; a pool with none free for 10 s is 'busy'."""
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise DatabaseUnavailable(
                "the server is busy (every database connection is in use); retry shortly"
            ) from None

    def _writable(self) -> None:
        if self.read_only:
            raise ConfigError("this server is read-only (--read-only): it records no usage")

    def verify(self, token: str) -> TokenInfo | None:
        """tokens.verify_token."""
        return self._with_conn(lambda conn: verify_token(conn, token))

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            return self._with_conn(lambda conn: conn.execute("SELECT 1").fetchone() is not None)
        except (psycopg.Error, SingularityOpsError):
            return False


# --- errors, one mapping for every face ----------------------------------------------------

_NOT_FOUND = (ArtifactNotFound, SearchNotFound)
_UNAVAILABLE = (SearchUnavailable, DatabaseUnavailable)


def describe_error(exc: BaseException, settings: Settings) -> tuple[int, str]:
    """(HTTP status, message a caller can act on) for an exception from a library call."""
    if isinstance(exc, ConfigError):
        return 400, exc.message
    if isinstance(exc, _NOT_FOUND):
        return 404, str(exc)
    if isinstance(exc, _UNAVAILABLE):
        return 503, str(exc)
    if isinstance(exc, SingularityOpsError):
        return 400, exc.message
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return 503, f"the database took longer than {STATEMENT_TIMEOUT_MS} ms and was cancelled"
    explained = explain_db_error(exc)  # the same words the CLI uses
    if explained is not None:
        status = 503 if isinstance(exc, psycopg.OperationalError) else 500
        return status, settings.redact(explained)
    if isinstance(exc, psycopg.Error):
        return 500, "database error: " + settings.redact(str(exc).strip()[:300])
    return 500, "internal error (see the server's log)"


# --- MCP --------------------------------------------------------------------------------


def _caller() -> tuple[str, list[str]] | None:
    """(token name, scopes) of the current HTTP request; None over stdio or with --no-auth."""
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    return None if token is None else (token.client_id, list(token.scopes))


class _TokenVerifier:
    """mcp's TokenVerifier over tokens.verify_token (a pool connection, in a thread)."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge

    async def verify_token(self, token: str):  # -> AccessToken | None
        import anyio.to_thread
        from mcp.server.auth.provider import AccessToken

        try:
            info = await anyio.to_thread.run_sync(self.knowledge.verify, token)
        except (psycopg.Error, SingularityOpsError) as exc:
            log.warning("token check failed: %s", describe_error(exc, self.knowledge.settings)[1])
            return None
        if info is None:
            return None
        return AccessToken(token="", client_id=info.name, scopes=info.scopes)


def build_mcp(
    knowledge: Knowledge,
    *,
    require_tokens: bool = False,
    issuer_url: str = "http://127.0.0.1",
) -> Any:
    """The MCP server (mcp.server.mcpserver.MCPServer) over `knowledge`: tools, a prompt and a
    resource template. require_tokens: HTTP callers need a bearer token (read scope), the
    write tools the write scope. knowledge.read_only leaves the write tools out."""
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from . import __version__

    settings = knowledge.settings
    server = MCPServer(
        name="singularity-ops",
        title="Singularity knowledge base",
        instructions=INSTRUCTIONS,
        version=__version__,
        token_verifier=_TokenVerifier(knowledge) if require_tokens else None,
        auth=AuthSettings(issuer_url=issuer_url, resource_server_url=None, required_scopes=["read"])
        if require_tokens
        else None,
        log_level="WARNING",
    )

    def call(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (SingularityOpsError, psycopg.Error) as exc:
            _status, message = describe_error(exc, settings)
            raise ToolError(message) from None

    def writer() -> str | None:
        caller = _caller()
        if require_tokens and (caller is None or "write" not in caller[1]):
            raise ToolError(
                "this token has read scope; recording usage needs a token made with "
                "`singularity-ops token create NAME --scope write`"
            )
        return caller[0] if caller else None

    _add_read_tools(server, knowledge, call)
    if not knowledge.read_only:
        _add_write_tools(server, knowledge, call, writer)
    _add_resource_and_prompt(server, knowledge)
    return server


def _add_read_tools(server: Any, knowledge: Knowledge, call: Callable) -> None:
    """search, get_artifact and usage_report."""
    from mcp_types import ToolAnnotations

    read = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read)
    def search(
        query: Annotated[str, Field(description="What you need, in your own words.")],
        limit: Annotated[
            int, Field(ge=1, description="How many hits (at most search.max_top_k).")
        ] = DEFAULT_LIMIT,
        mode: Literal["hybrid", "vector", "text"] = DEFAULT_MODE,
        types: Annotated[list[str], Field(description="Only these artifact types.")] = [],  # noqa: B006
        tags: Annotated[list[str], Field(description="Only artifacts with all these tags.")] = [],  # noqa: B006
        language: Annotated[str | None, Field(description="Only this language.")] = None,
        rank_by: Annotated[
            Literal["relevance", "proven"],
            Field(description="proven: near-ties go to artifacts with a record of success."),
        ] = "relevance",
    ) -> SearchResult:
        """Find curated artifacts (patterns, templates, prompts) by meaning and words, best
        first. Keep the returned search_id for record_usage."""
        return call(
            lambda: knowledge.search(
                query, limit=limit, mode=mode, types=types, tags=tags, language=language,
                rank_by=rank_by,
            )
        )  # fmt: skip

    @server.tool(annotations=read)
    def get_artifact(
        artifact_type: str,
        artifact_id: str,
        version: Annotated[str, Field(description="A version, or 'latest'.")] = LATEST,
    ) -> ArtifactView:
        """One artifact's content (JSON; the text is cut at 20,000 characters and `truncated`
        says so), its source path and how often it helped."""
        return call(lambda: knowledge.artifact(artifact_type, artifact_id, version))

    @server.tool(annotations=read)
    def usage_report(
        since: Annotated[str, Field(description="A window like '30d' or '2w'.")] = "30d",
        type: Annotated[str | None, Field(description="Only this artifact type.")] = None,
        top: Annotated[int, Field(ge=1, le=100)] = 10,
    ) -> UsageReport:
        """The most used artifacts of a window, their success rates, and the falling ones."""
        return call(lambda: knowledge.report(since, types=[type] if type else [], top=top))


def _add_write_tools(
    server: Any, knowledge: Knowledge, call: Callable, writer: Callable[[], str | None]
) -> None:
    """record_usage and record_usage_batch (the write scope, when tokens are required)."""
    from mcp_types import ToolAnnotations

    write = ToolAnnotations(
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    )

    @server.tool(annotations=write)
    def record_usage(
        artifact_type: str,
        artifact_id: str,
        success: bool,
        event_id: Annotated[
            str | None, Field(description="Your id for this use: a retry with it counts once.")
        ] = None,
        search_id: Annotated[
            str | None, Field(description="The search_id of the search that found it.")
        ] = None,
        duration_ms: Annotated[int | None, Field(ge=0)] = None,
        metadata: dict[str, Any] | None = None,
        version: str = LATEST,
    ) -> UsageResult:
        """Report whether an artifact helped. `recorded` false means this event_id was
        recorded before (a duplicate); nothing changed."""
        reporter = writer()
        return call(
            lambda: knowledge.record(
                artifact_type, artifact_id, success=success, version=version,
                event_id=event_id, search_id=search_id, duration_ms=duration_ms,
                metadata=metadata, reported_by=reporter,
            )
        )  # fmt: skip

    @server.tool(annotations=write)
    def record_usage_batch(
        events: Annotated[
            list[dict[str, Any]],
            Field(
                max_length=500,
                description="Up to 500 events shaped like record_usage's arguments "
                "(artifact_type, artifact_id, success, event_id, search_id, duration_ms, "
                "metadata, version, used_at).",
            ),
        ],
    ) -> BatchResult:
        """Report many outcomes at once: valid events are recorded, each invalid one comes
        back in `errors` with its position."""
        reporter = writer()
        return call(lambda: knowledge.record_batch(events, reported_by=reporter))


def _add_resource_and_prompt(server: Any, knowledge: Knowledge) -> None:
    """The artifact resource template and the use_knowledge_base prompt."""
    from mcp.server.mcpserver.exceptions import ResourceError

    @server.resource(
        "kb://artifact/{artifact_type}/{artifact_id}",
        name="artifact",
        description="An artifact's original JSON text (latest version).",
        mime_type="application/json",
    )
    def artifact_resource(artifact_type: str, artifact_id: str) -> str:
        try:
            view = knowledge.artifact(artifact_type, artifact_id, max_chars=None)
        except (SingularityOpsError, psycopg.Error) as exc:
            raise ResourceError(describe_error(exc, knowledge.settings)[1]) from None
        return view.content_raw

    @server.prompt(
        name="use_knowledge_base",
        description="How to use the knowledge base for a task, and report back.",
    )
    def use_knowledge_base(task: str) -> str:
        return (
            f"Task: {task}\n\n"
            "1. Call `search` with what the task needs, in your own words; keep its search_id.\n"
            "2. Call `get_artifact` for the hit you will follow, and read its content.\n"
            "3. Do the task, following the artifact where it fits.\n"
            "4. Call `record_usage` with that artifact, success true or false, the search_id "
            "from step 1 and an event_id of your own, so a retry counts once. Report failures "
            "too: ranking learns from both."
        )


# --- HTTP: MCP at /mcp, /healthz, and the JSON API under /v1 ------------------------------


@dataclass(frozen=True)
class HttpOptions:
    """How `serve --transport http` listens."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    require_tokens: bool = True
    allowed_hosts: tuple[str, ...] = ()  # Host values accepted besides loopback (host or host:port)
    max_body_bytes: int = MAX_BODY_BYTES
    stateless: bool = False  # no MCP sessions: any replica answers any request


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_http_options(options: HttpOptions) -> None:
    """Refuse what would expose the knowledge base: --no-auth or no --allowed-host beyond
    loopback."""
    if is_loopback(options.host):
        return
    if not options.require_tokens:
        raise ConfigError(
            f"--no-auth is refused on a non-loopback host ({options.host}): anyone who can reach "
            "it could read and write the knowledge base; create a token (`singularity-ops token "
            "create NAME`) instead"
        )
    if not options.allowed_hosts:
        raise ConfigError(
            f"--host {options.host} needs --allowed-host NAME[:PORT] (repeatable): the Host "
            "values clients use to reach this server (DNS rebinding protection stays on)"
        )


def _host_patterns(options: HttpOptions) -> tuple[list[str], list[str]]:
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    for name in options.allowed_hosts:
        hosts.append(name if ":" in name.strip("[]").rsplit("]", 1)[-1] else f"{name}:*")
        if ":" not in name:
            hosts.append(name)
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return hosts, origins


def _host_allowed(value: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith(":*"):
            if value == pattern[:-2] or value.startswith(pattern[:-1]):
                return True
        elif value == pattern:
            return True
    return False


def _error(status: int, message: str, **headers: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _field(data: Any, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """data[key] of the given type; a missing key is `default`, or a ConfigError without one."""
    if not isinstance(data, dict):
        raise ConfigError("the request body must be a JSON object")
    if key not in data or data[key] is None:
        if default is ...:
            raise ConfigError(f"{key!r} is required")
        return default
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key!r} has the wrong type")
    return value


class _JsonApi:
    """What the /v1 routes share: Host/Origin and token checks, bounded bodies, and library
    calls in a worker thread with the same error mapping as the tools."""

    def __init__(self, knowledge: Knowledge, options: HttpOptions) -> None:
        self.knowledge = knowledge
        self.options = options
        self.hosts, self.origins = _host_patterns(options)

    async def guard(self, request: Any, scope: str) -> tuple[Any, str | None]:
        """(an error response, or None) and the caller's token name."""
        import anyio.to_thread

        if not _host_allowed(request.headers.get("host", ""), self.hosts):
            return _error(421, "this Host is not served here (see --allowed-host)"), None
        origin = request.headers.get("origin")
        if origin and not _host_allowed(origin, self.origins):
            return _error(403, "this Origin is not allowed"), None
        if not self.options.require_tokens:
            return None, None
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if kind.lower() != "bearer" or not token:
            message = "a bearer token is needed (singularity-ops token create NAME)"
            return _error(401, message, **challenge), None
        info = await anyio.to_thread.run_sync(self.knowledge.verify, token.strip())
        if info is None:
            return _error(401, "unknown or revoked token", **challenge), None
        if scope == "write" and info.scope != "write":
            message = "this token has read scope; recording usage needs --scope write"
            return _error(403, message), None
        return None, info.name

    async def body(self, request: Any) -> Any:
        """The request's JSON, read no further than --max-body-bytes."""
        limit = self.options.max_body_bytes
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ConfigError(f"the request body is larger than {limit:,} bytes")
        try:
            return json.loads(data or b"null")
        except (ValueError, RecursionError):
            raise ConfigError("the request body is not valid JSON") from None

    async def answer(self, fn: Callable[[], Any]) -> Any:
        import anyio.to_thread
        from starlette.responses import JSONResponse

        try:
            result = await anyio.to_thread.run_sync(fn)
        except (SingularityOpsError, psycopg.Error) as exc:
            return _error(*describe_error(exc, self.knowledge.settings))
        return JSONResponse(to_jsonable(result))

    async def search(self, request: Any) -> Any:
        refused, _name = await self.guard(request, "read")
        if refused:
            return refused
        try:
            data = await self.body(request)
            query = _field(data, "query", str)
            kwargs = dict(
                limit=_field(data, "limit", int, DEFAULT_LIMIT),
                mode=_field(data, "mode", str, DEFAULT_MODE),
                types=_field(data, "types", list, []),
                tags=_field(data, "tags", list, []),
                language=_field(data, "language", str, None),
                rank_by=_field(data, "rank_by", str, "relevance"),
            )
        except ConfigError as exc:
            return _error(400, exc.message)
        return await self.answer(lambda: self.knowledge.search(query, **kwargs))

    async def artifact(self, request: Any) -> Any:
        refused, _name = await self.guard(request, "read")
        if refused:
            return refused
        params = request.path_params
        version = request.query_params.get("version", LATEST)
        return await self.answer(
            lambda: self.knowledge.artifact(params["artifact_type"], params["artifact_id"], version)
        )

    async def usage(self, request: Any) -> Any:
        if self.knowledge.read_only:
            return _error(405, "this server is read-only (--read-only): it records no usage")
        refused, name = await self.guard(request, "write")
        if refused:
            return refused
        try:
            data = await self.body(request)
        except ConfigError as exc:
            return _error(400, exc.message)
        events = data.get("events") if isinstance(data, dict) and "events" in data else [data]
        if not isinstance(events, list):
            return _error(400, "'events' must be a list of events")
        return await self.answer(lambda: self.knowledge.record_batch(events, reported_by=name))


def build_http_app(knowledge: Knowledge, options: HttpOptions) -> tuple[Any, Any]:
    """(the Starlette app, the MCP server): MCP at /mcp, GET /healthz, and POST /v1/search,
    GET /v1/artifacts/{type}/{id}, POST /v1/usage behind the same tokens."""
    import anyio.to_thread
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.responses import JSONResponse

    check_http_options(options)
    server = build_mcp(knowledge, require_tokens=options.require_tokens)
    api = _JsonApi(knowledge, options)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=api.hosts,
        allowed_origins=api.origins,
    )

    async def healthz(request: Any) -> Any:
        ok = await anyio.to_thread.run_sync(knowledge.ping)
        sessions = len(getattr(server.session_manager, "_server_instances", {}))
        return JSONResponse(
            {"status": "ok" if ok else "database unavailable", "sessions": sessions},
            status_code=200 if ok else 503,
        )

    server.custom_route("/healthz", methods=["GET"])(healthz)
    server.custom_route("/v1/search", methods=["POST"])(api.search)
    server.custom_route("/v1/artifacts/{artifact_type}/{artifact_id}", methods=["GET"])(
        api.artifact
    )
    server.custom_route("/v1/usage", methods=["POST"])(api.usage)

    app = server.streamable_http_app(
        host=options.host,
        transport_security=security,
        max_request_body_size=options.max_body_bytes,
        stateless_http=options.stateless,
        json_response=options.stateless,
        session_idle_timeout=None if options.stateless else 600,
    )
    return app, server


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); a taken port is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every streamed response waits out the client's 40 ms delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown, which would kill the process
        before the pool closes: here a stop asked for by a signal is a clean exit (status 0)."""

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server


def serve_http(
    knowledge: Knowledge,
    options: HttpOptions,
    announce: Callable[[str, dict], None],
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn finishes requests in flight, then returns). `sock`:
    a socket bind() made before the model loaded (a taken port then fails at once)."""
    import uvicorn

    app, _server = build_http_app(knowledge, options)
    sock = sock or bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    base = f"http://{shown}:{port}"
    announce(
        f"serving MCP on {base}/mcp (JSON API under /v1, health at /healthz)"
        + ("" if options.require_tokens else "; no tokens required (--no-auth)"),
        {"url": base, "mcp": f"{base}/mcp", "healthz": f"{base}/healthz", "port": port},
    )
    _uvicorn_server_class()(config).run(sockets=[sock])


def serve_stdio(knowledge: Knowledge) -> None:
    """Serve one client over stdin/stdout; stdout carries the protocol and nothing else."""
    import anyio

    server = build_mcp(knowledge)
    anyio.run(server.run_stdio_async)


def quiet_server_logs() -> None:
    """Library log lines go to stderr, warnings and up (never to stdout, which stdio needs)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("singularity-ops serve: %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
