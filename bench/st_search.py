"""The search path before issue 12, as a baseline: sentence-transformers on torch embeds the
query, then the same vector SQL runs. bench/run.py times this whole process beside
`singularity-ops search`.

    python bench/st_search.py CONFIG QUERY
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from singularity_ops.config import load_settings
from singularity_ops.db import connect
from singularity_ops.local_model import weights_dir
from singularity_ops.search import SearchQuery, search_vector


def main() -> None:
    config, query = sys.argv[1], sys.argv[2]
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(weights_dir()), device="cpu")
    vector = model.encode([query], normalize_embeddings=True)[0]
    settings = load_settings(config_file=config)
    with connect(settings) as conn:
        for hit in search_vector(conn, vector, settings.embedding, SearchQuery(top_k=10)):
            print(f"{hit.similarity:.3f}  {hit.artifact_type}/{hit.artifact_id}")


if __name__ == "__main__":
    main()
