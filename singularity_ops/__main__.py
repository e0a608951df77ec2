"""`python -m singularity_ops` runs the command line."""

from .cli import main

main()
