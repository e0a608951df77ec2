"""The local model on onnxruntime: equal to sentence-transformers, cached, rebuilt, no torch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, clean_env

from singularity_ops import local_model
from singularity_ops.embed import embedding_text
from singularity_ops.local_model import (
    DATA_FILE,
    GRAPH_FILE,
    MANIFEST_FILE,
    ModelError,
    ensure_graph,
    load_encoder,
)

# Fixed texts: short, non-ASCII (accents, CJK, emoji), code, and one far over 256 tokens.
TEXTS = [
    "NATS consumer with error handling",
    "Grüße aus Köln: naïve café, crème brûlée, Ångström",
    "日本語のテキストと中文文本, and an emoji 🚀 in between",
    "def retry(fn, attempts=3):\n    for i in range(attempts):\n        try: return fn()\n        except Exception: time.sleep(2 ** i)",
    "circuit breaker " * 300,
    "x",
]


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers on torch: the reference the ONNX graph must equal."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        yield SentenceTransformer(str(local_model.weights_dir()), device="cpu")


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


def corpus_texts():
    """The embedding text of every starter artifact, as embed computes it."""
    from singularity_ops.config import load_settings
    from singularity_ops.corpus import scan

    settings = load_settings(cwd=ROOT, env={})
    result = scan(settings.templates_dir, type_map=settings.type_map)
    return [
        embedding_text(a.artifact_type, a.artifact_id, json.loads(a.content_raw))
        for a in result.artifacts
    ]


def test_onnx_vectors_equal_sentence_transformers(reference, encoder):
    texts = TEXTS + corpus_texts()
    assert len(encoder.tokenizer.encode(TEXTS[4]).ids) == 256, "the long text is truncated at 256"
    ours = np.array(encoder.encode(texts, batch_size=8))
    theirs = reference.encode(texts, batch_size=8, normalize_embeddings=True)
    cosines = (ours * theirs).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    assert ours.shape == (len(texts), 384)
    assert cosines.min() >= 0.9999999, list(zip(cosines.round(7), texts, strict=True))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_batching_and_order_do_not_change_vectors(encoder):
    one_by_one = np.array([encoder.encode([t])[0] for t in TEXTS])
    batched = np.array(encoder.encode(TEXTS, batch_size=4))
    assert np.allclose(one_by_one, batched, atol=1e-5)


def test_batches_hold_at_most_the_token_budget_and_vectors_do_not_change(encoder):
    """Memory is bounded by tokens per run, not texts per batch: every run the session sees
    holds at most the budget (padding included), unless one text alone is longer."""
    runs = []
    session = encoder.session

    class Recording:
        def run(self, names, feeds):
            runs.append(feeds["input_ids"].shape)
            return session.run(names, feeds)

    texts = TEXTS * 6
    try:
        encoder.session = Recording()
        budgeted = np.array(encoder.encode(texts, batch_size=64, token_budget=300))
    finally:
        encoder.session = session
    assert len(runs) > 3
    assert all(rows * width <= 300 or rows == 1 for rows, width in runs), runs
    assert sum(rows for rows, _ in runs) == len(texts)
    assert np.allclose(budgeted, np.array(encoder.encode(texts)), atol=1e-5)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SINGULARITY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SINGULARITY_ONNX_MODEL", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def once_built(tmp_path_factory):
    """A cache with the graph built, once for the module."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SINGULARITY_CACHE_DIR", str(cache))
        patch.delenv("SINGULARITY_ONNX_MODEL", raising=False)
        assert ensure_graph().built
    return cache


@pytest.fixture
def built_cache(private_cache, once_built):
    """private_cache holding a copy of a built graph (new inodes: the first load verifies its
    checksum and stamps it), for tests that damage one: a copy costs a tenth of a build."""
    shutil.copytree(once_built, private_cache)
    return private_cache


def test_missing_cache_is_built_once_then_reused(private_cache):
    built = ensure_graph()
    assert built.built and built.path.is_relative_to(private_cache)
    assert ROOT not in built.path.parents, "the cache lives outside the checkout"
    assert json.loads((built.path.parent / MANIFEST_FILE).read_text())["weights_sha256"] == (
        built.weights_sha256
    )
    again = ensure_graph()
    assert not again.built and again.path == built.path
    leftovers = [p.name for p in built.path.parent.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_without_build_a_missing_graph_names_the_command(private_cache):
    with pytest.raises(ModelError, match=r"not built yet.*run `singularity-ops model build`"):
        ensure_graph(build=False)


def test_truncated_graph_data_is_rebuilt(built_cache):
    first = ensure_graph()
    with open(first.path.parent / DATA_FILE, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ModelError, match="truncated or corrupt"):
        ensure_graph(build=False)
    rebuilt = ensure_graph()
    assert rebuilt.built and (rebuilt.path.parent / DATA_FILE).stat().st_size > 80_000_000
    assert load_encoder().encode(["ok"])[0].shape == (384,)


def test_a_graph_onnxruntime_refuses_is_rebuilt_on_load(built_cache):
    first = ensure_graph()
    graph = first.path.parent / GRAPH_FILE
    size = graph.stat().st_size
    graph.write_bytes(b"\xff" * size)  # same size: only onnxruntime can tell
    encoder = load_encoder()
    assert graph.read_bytes() != b"\xff" * size
    assert encoder.encode(["ok"])[0].shape == (384,)


def test_a_flipped_bit_is_caught_once_the_file_changed_and_by_verify(built_cache):
    first = ensure_graph()
    data = first.path.parent / DATA_FILE
    stat = data.stat()
    with open(data, "r+b") as fh:
        fh.seek(12345)
        byte = fh.read(1)
        fh.seek(12345)
        fh.write(bytes([byte[0] ^ 1]))
    # with its mtime put back, only the stamp can vouch for it: `model status --verify` hashes
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not ensure_graph().built, "the stamp (size, mtime, inode) stands in after a verify"
    with pytest.raises(ModelError, match="does not match the sha256"):
        ensure_graph(build=False, verify=True)
    assert ensure_graph(verify=True).built


def test_prebuilt_graph_directory_is_used_as_is(private_cache, tmp_path):
    built = ensure_graph()
    assert ensure_graph(prebuilt=str(built.path.parent)).path == built.path
    with pytest.raises(ModelError, match=r"SINGULARITY_ONNX_MODEL=.*cannot be used: not built yet"):
        ensure_graph(prebuilt=str(tmp_path / "nowhere"))
    # the settings carry it, as they carry every other setting
    from singularity_ops.config import load_settings

    env = {"SINGULARITY_ONNX_MODEL": str(built.path.parent), "SINGULARITY_CACHE_DIR": "/c"}
    embedding = load_settings(cwd=tmp_path, env=env).embedding
    assert (embedding.onnx_model, embedding.cache_dir) == (str(built.path.parent), "/c")


def test_build_killed_before_its_rename_leaves_nothing_then_next_build_cleans_up(private_cache):
    marker = private_cache.parent / "paused"
    env = {
        **clean_env(SINGULARITY_CACHE_DIR=str(private_cache)),
        "SINGULARITY_TEST_PAUSE": "model-build:before-rename",
        "SINGULARITY_TEST_PAUSE_FILE": str(marker),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "singularity_ops", "model", "build"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the build never reached its pause point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    models = private_cache / "models" / local_model.MODEL_NAME
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == []
    assert any(".partial-" in p.name for p in models.iterdir()), "the staging directory is left"
    with pytest.raises(ModelError, match="not built yet"):
        ensure_graph(build=False)
    assert ensure_graph().built
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == []


def test_search_and_embed_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from singularity_ops.providers import EmbeddingConfig, make_provider\n"
        "from singularity_ops import search\n"
        "p = make_provider(EmbeddingConfig())\n"
        "assert len(p.embed(['a', 'b'])[1]) == 384\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_same_size_corruption_is_caught_by_the_checksum_and_rebuilt(built_cache):
    first = ensure_graph()
    data = first.path.parent / DATA_FILE
    with open(data, "r+b") as fh:  # flip the sign bits of a stretch of float32 weights
        fh.seek(4_000_000)
        chunk = bytearray(fh.read(400_000))
        for i in range(3, len(chunk), 4):
            chunk[i] ^= 0x80
        fh.seek(4_000_000)
        fh.write(chunk)
    with pytest.raises(ModelError, match="does not match the sha256"):
        ensure_graph(build=False)
    rebuilt = ensure_graph()
    assert rebuilt.built
    assert ensure_graph(build=False).path == rebuilt.path  # verified once, stamped after


def test_an_unreadable_tokenizer_is_rebuilt_and_nan_vectors_are_refused(built_cache):
    first = ensure_graph()
    tokenizer = first.path.parent / "tokenizer.json"
    tokenizer.write_bytes(b"{" * tokenizer.stat().st_size)
    encoder = load_encoder()  # the checksum finds it; the entry is rebuilt
    assert encoder.encode(["ok"])[0].shape == (384,)
    session = encoder.session

    class NaNs:
        def run(self, names, feeds):
            (vectors,) = session.run(names, feeds)
            vectors[0, 0] = np.nan
            return (vectors,)

    encoder.session = NaNs()
    with pytest.raises(ModelError, match=r"NaN or infinite values.*model build --force"):
        encoder.encode(["ok"])


def test_concurrent_first_builds_all_succeed_on_one_entry(private_cache):
    code = (
        "from singularity_ops.local_model import load_encoder\n"
        "print(load_encoder().encode(['ok'])[0].shape)\n"
    )
    env = clean_env(SINGULARITY_CACHE_DIR=str(private_cache))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(6)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _out, _err in results] == [0] * 6, [err[-500:] for *_x, err in results]
    entries = [
        p for p in (private_cache / "models").rglob("*") if p.is_dir() and p.parent.name != "models"
    ]
    assert len([e for e in entries if not e.name.startswith(".")]) == 1


def test_a_query_encoder_starts_light_gives_the_same_vectors_and_upgrades(encoder):
    import onnxruntime as ort

    from singularity_ops.config import load_settings
    from singularity_ops.local_model import LIGHT_SESSION_TEXTS
    from singularity_ops.providers import make_provider

    def light(session) -> bool:
        options = session.get_session_options()
        skips_optimizing = (
            options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        try:
            skips_prepacking = options.get_session_config_entry("session.disable_prepacking") == "1"
        except RuntimeError:  # onnxruntime raises when the entry was never set
            skips_prepacking = False
        assert skips_optimizing == skips_prepacking
        return skips_optimizing

    queries = ["retry with backoff", "runtime security monitoring of containers", "tracing"]
    quick = make_provider(load_settings(cwd=ROOT, env={}).embedding, queries=True)
    assert light(quick._encoder.session) and not light(encoder.session)
    ours, theirs = np.array(quick.embed(queries)), np.array(encoder.encode(queries))
    assert np.abs(ours - theirs).max() < 1e-6
    # A long stream of queries gets the full session once the light one has served its share.
    for _ in range(LIGHT_SESSION_TEXTS // len(queries) - 1):
        quick.embed(queries)
    assert light(quick._encoder.session)
    upgraded = np.array(quick.embed(queries))
    assert not light(quick._encoder.session)
    assert np.abs(upgraded - theirs).max() < 1e-6
    # A batch bigger than the light session's share goes to a full session at once.
    batch = make_provider(load_settings(cwd=ROOT, env={}).embedding, queries=True)
    batch.embed(queries * (LIGHT_SESSION_TEXTS // len(queries) + 1))
    assert not light(batch._encoder.session)


def test_the_swap_to_a_full_session_outlasts_a_cache_entry_being_replaced(tmp_path):
    """`model build --force` renames the entry away and a new one into place; a swap that
    lands in between waits for the new one instead of failing the stream of queries."""
    import threading

    from singularity_ops.local_model import LIGHT_SESSION_TEXTS, TOKENIZER_FILE, OnnxEncoder

    info = ensure_graph()
    entry = tmp_path / "entry"
    entry.mkdir()
    for name in (GRAPH_FILE, DATA_FILE, TOKENIZER_FILE):
        os.symlink(info.path.parent / name, entry / name)
    quick = OnnxEncoder(entry / GRAPH_FILE, entry / TOKENIZER_FILE, optimize=False)
    quick.encode(["retry with backoff"])
    aside = tmp_path / "aside"
    entry.rename(aside)
    back = threading.Timer(0.05, aside.rename, args=(entry,))
    back.start()
    try:
        vectors = quick.encode(["tracing"] * LIGHT_SESSION_TEXTS)
    finally:
        back.join()
    assert not quick.light and len(vectors) == LIGHT_SESSION_TEXTS
    # An entry that stays gone fails the swap with the rebuild hint, not a traceback.
    slow = OnnxEncoder(entry / GRAPH_FILE, entry / TOKENIZER_FILE, optimize=False)
    entry.rename(aside)
    with pytest.raises(ModelError, match="rebuild it with"):
        slow.encode(["tracing"] * (LIGHT_SESSION_TEXTS + 1))
