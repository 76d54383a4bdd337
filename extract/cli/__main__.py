"""`python -m extract.cli` is img-extract."""

from extract.cli.run import main

main()
