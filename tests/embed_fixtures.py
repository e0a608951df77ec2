"""A small corpus for embed and search tests, and helpers to import and embed it."""

from corpus_fixtures import write

from singularity_ops.corpus import scan
from singularity_ops.db import connect
from singularity_ops.embed import embed
from singularity_ops.importer import import_artifacts
from singularity_ops.providers import EmbeddingConfig

LOCAL = EmbeddingConfig()


class UnusedProvider:
    """A provider that fails the test if embed() asks it for anything."""

    name, model, dimensions = "unused", LOCAL.model, LOCAL.dimensions

    def embed(self, texts):
        raise AssertionError(f"embed() did model work on {len(texts)} texts")


def small_corpus(root):
    write(
        root,
        "code/nats_consumer.json",
        {
            "id": "nats_consumer",
            "name": "NATS JetStream consumer with error handling",
            "language": "go",
            "description": "Durable pull consumer that acks, naks with delay on transient errors and dead-letters poison messages.",
            "tags": ["nats", "messaging"],
        },
    )
    write(
        root,
        "code/css_grid.json",
        {
            "id": "css_grid",
            "name": "Responsive CSS grid layout",
            "language": "css",
            "description": "A twelve column grid with breakpoints for phones, tablets and desktops.",
            "tags": ["frontend"],
        },
    )
    write(
        root,
        "code/pancakes.json",
        {
            "id": "pancakes",
            "name": "Fluffy pancake recipe",
            "description": "Flour, eggs, milk, and a hot pan.",
            "tags": ["cooking"],
        },
    )
    write(
        root,
        "prompts/commit_message.json",
        {
            "id": "commit_message",
            "name": "Write a commit message",
            "description": "Conventional commit from a diff.",
            "tags": ["git"],
        },
    )
    write(
        root,
        "prompts/queue_worker.json",
        {
            "id": "queue_worker",
            "name": "Message queue worker retries",
            "language": "go",
            "description": "Consume messages from a queue and retry failures with backoff.",
            "tags": ["messaging"],
        },
    )
    return root


def imported(settings, root):
    with connect(settings, autocommit=True) as conn:
        import_artifacts(conn, scan(root))


def run_embed(settings, provider, config=LOCAL, **kwargs):
    with connect(settings, autocommit=True) as conn:
        return embed(conn, provider, config, **kwargs)
