"""singularity-ops: operations toolkit for the singularity knowledge base in PostgreSQL."""

__version__ = "0.1.0"
