"""`python -m perdure` is the `perdure` command."""

from perdure.cli import main

main()
