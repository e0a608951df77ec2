"""Embedding providers: the local all-MiniLM-L6-v2 on onnxruntime (default) and OpenAI-compatible HTTP.

The local model's imports (onnxruntime, tokenizers, numpy) happen only when a local provider
is created, never at CLI start-up.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .errors import ConfigError, ProviderError

if TYPE_CHECKING:
    import urllib.error

LOCAL_MODEL = "all-MiniLM-L6-v2"
DEFAULT_DIMENSIONS = {"local": 384, "openai": 1536}
DEFAULT_MODELS = {"local": LOCAL_MODEL, "openai": "text-embedding-3-small"}


@dataclass(frozen=True)
class EmbeddingConfig:
    """The `embedding:` section of singularity.yaml, resolved."""

    provider: str = "local"
    model: str = LOCAL_MODEL
    dimensions: int = 384
    batch_size: int = 64
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 30.0
    max_retries: int = 5
    # HNSW candidates per search (pgvector's hnsw.ef_search): at 100,000 vectors 200 gave
    # recall@10 0.99 at 5 ms p95 where pgvector's default 40 gave 0.83 (bench/results).
    ef_search: int = 200
    # The local model's files, resolved by config.load_settings like every other setting:
    # SINGULARITY_ONNX_MODEL (a prebuilt graph directory, used as is) and the cache root
    # (SINGULARITY_CACHE_DIR, else $XDG_CACHE_HOME/singularity-ops, else ~/.cache/...).
    onnx_model: str | None = None
    cache_dir: str | None = None


class Provider(Protocol):
    """Turns texts into vectors of `dimensions` floats."""

    name: str
    model: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class LocalProvider:
    """all-MiniLM-L6-v2 on onnxruntime (see local_model): no torch, no network."""

    name = "local"

    def __init__(
        self, config: EmbeddingConfig, *, serving: bool = False, queries: bool = False
    ) -> None:
        """serving=True tunes onnxruntime for many small concurrent requests, queries=True
        for a few short queries in a short process (see local_model.OnnxEncoder), instead
        of big batches."""
        from . import local_model

        if config.model != LOCAL_MODEL:
            raise ConfigError(
                f"singularity.yaml: embedding.model {config.model!r} is not available offline; "
                f"the local provider ships {LOCAL_MODEL!r} only"
            )
        if config.dimensions != local_model.DIMENSIONS:
            raise ConfigError(
                f"singularity.yaml: embedding.dimensions is {config.dimensions}, "
                f"but {LOCAL_MODEL} produces {local_model.DIMENSIONS}"
            )
        self.model = config.model
        self.dimensions = local_model.DIMENSIONS
        self.batch_size = config.batch_size
        try:
            self._encoder = local_model.load_encoder(
                prebuilt=config.onnx_model,
                cache_dir=config.cache_dir,
                serving=serving,
                optimize=not queries,
            )
        except ImportError as exc:
            raise ProviderError(
                f"the local model needs onnxruntime, tokenizers and numpy ({exc}); run "
                "./scripts/setup or pip install 'singularity-ops[embed]'"
            ) from None

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._encoder.encode(texts, batch_size=self.batch_size)


class OpenAIProvider:
    """Any OpenAI-compatible /v1/embeddings endpoint (OpenAI, Ollama, vLLM, ...)."""

    name = "openai"

    def __init__(self, config: EmbeddingConfig, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.model = config.model
        self.dimensions = config.dimensions
        self.url = config.base_url.rstrip("/") + "/embeddings"
        self.timeout = config.timeout
        self.max_retries = config.max_retries
        self.key_env = config.api_key_env
        self._key = env.get(config.api_key_env, "")
        host = urlsplit(self.url).hostname or ""
        if not self._key and (host == "openai.com" or host.endswith(".openai.com")):
            raise ProviderError(
                f"{self.url} needs an API key, but ${self.key_env} is not set; export it "
                "(or name another variable with embedding.api_key_env)"
            )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "singularity-ops"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import urllib.error  # here, not at start-up: a search with the local model never needs them
        import urllib.request

        body = json.dumps({"model": self.model, "input": list(texts)}).encode()
        attempt = 0
        while True:
            request = urllib.request.Request(
                self.url, data=body, headers=self._headers(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                return self._vectors(payload, len(texts))
            except urllib.error.HTTPError as exc:
                status = exc.code
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                detail = self._error_text(exc)
                if status in (401, 403) and not self._key:
                    raise ProviderError(
                        f"{self.url} needs an API key (HTTP {status}), but ${self.key_env} is not "
                        f"set; export it (or name another variable with embedding.api_key_env){detail}"
                    ) from None
                if status in (401, 403):
                    raise ProviderError(
                        f"{self.url} refused the API key (HTTP {status}); check the key in "
                        f"${self.key_env}{detail}"
                    ) from None
                if status == 404:
                    raise ProviderError(
                        f"{self.url} answered 404: wrong embedding.base_url or unknown model "
                        f"{self.model!r}{detail}"
                    ) from None
                if status != 429 and status < 500:
                    raise ProviderError(f"{self.url} answered HTTP {status}{detail}") from None
                reason = f"HTTP {status}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                retry_after = None
                reason = str(getattr(exc, "reason", exc))
            attempt += 1
            if attempt > self.max_retries:
                raise ProviderError(
                    f"{self.url} still failing after {self.max_retries} retries: {reason}"
                )
            time.sleep(_backoff(attempt, retry_after))

    def _error_text(self, exc: urllib.error.HTTPError) -> str:
        try:
            text = exc.read().decode(errors="replace")[:200].strip()
        except OSError:
            return ""
        if self._key:
            text = text.replace(self._key, "***")
        return f": {text}" if text else ""

    def _vectors(self, payload: dict, expected: int) -> list[list[float]]:
        try:
            items = sorted(payload["data"], key=lambda item: item["index"])
            vectors = [item["embedding"] for item in items]
        except (KeyError, TypeError):
            raise ProviderError(
                f"{self.url} returned no embeddings (no data[].embedding)"
            ) from None
        if len(vectors) != expected:
            raise ProviderError(
                f"{self.url} returned {len(vectors)} embeddings for {expected} texts"
            )
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise ProviderError(
                    f"{self.url} returned {len(vector)}-dimensional vectors for model {self.model!r}, "
                    f"but embedding.dimensions is {self.dimensions}; fix singularity.yaml "
                    "(and run embed --rebuild)"
                )
        return vectors


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _backoff(attempt: int, retry_after: str | None) -> float:
    asked = retry_after_seconds(retry_after)
    if asked is not None:
        return min(asked, 60.0)
    return min(0.2 * 2 ** (attempt - 1), 10.0) * random.uniform(0.75, 1.25)


def make_provider(
    config: EmbeddingConfig, *, serving: bool = False, queries: bool = False
) -> Provider:
    """The provider for this configuration (loading a local model takes seconds); serving=True
    for a long-running server answering one query at a time from many threads, queries=True
    for a process that embeds only a few search queries."""
    if config.provider == "local":
        return LocalProvider(config, serving=serving, queries=queries)
    if config.provider == "openai":
        return OpenAIProvider(config)
    raise ConfigError(
        f"singularity.yaml: embedding.provider must be 'local' or 'openai', got {config.provider!r}"
    )


def model_key(config: EmbeddingConfig, text_version: str) -> str:
    """What embedding_model records: provider, model, dimensions and the text function version.

    Any change to one of these is a model change: old vectors are never compared with new ones.
    """
    return f"{config.provider}:{config.model}:{config.dimensions}:{text_version}"
