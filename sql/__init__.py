"""The SQL migrations, shipped with the package (see pyproject.toml: package-dir)."""
