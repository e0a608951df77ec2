"""The floor for a cold `search`: a bare script that imports only onnxruntime, tokenizers,
numpy and psycopg, embeds one query with the same ONNX graph and runs one vector query.
bench/run.py times this whole process beside `singularity-ops search` (target: within 10 %).

    python bench/floor_search.py GRAPH TOKENIZER CONNINFO MODEL_KEY QUERY
"""

import sys

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer


def main() -> None:
    graph, tokenizer_file, conninfo, key, query = sys.argv[1:6]
    tokenizer = Tokenizer.from_file(tokenizer_file)
    tokenizer.enable_truncation(max_length=256)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
    encoding = tokenizer.encode(query)
    ids = np.array([encoding.ids], dtype=np.int64)
    mask = np.array([encoding.attention_mask], dtype=np.int64)
    (vectors,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
    literal = "[" + ",".join(f"{x:.7f}" for x in vectors[0]) + "]"
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT artifact_type, artifact_id, 1 - (embedding::vector(384) <=> %s::vector(384))"
            " FROM knowledge_artifacts WHERE embedding_model = %s"
            " ORDER BY embedding::vector(384) <=> %s::vector(384) LIMIT 10",
            (literal, key, literal),
        ).fetchall()
    for artifact_type, artifact_id, similarity in rows:
        print(f"{similarity:.3f}  {artifact_type}/{artifact_id}")


if __name__ == "__main__":
    main()
