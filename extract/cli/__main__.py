"""`python -m extract.cli` is img-extract."""

from extract.cli.main import main

main()
