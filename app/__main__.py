"""`python -m app` is the `selfinstruct` command (used to start child processes portably)."""

from app.cli import main

main()
