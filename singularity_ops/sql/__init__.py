"""The SQL migrations, shipped with the package (the top-level sql/ links here)."""
