"""`python -m app` is the `selfinstruct` command (used to start child processes portably)."""

from app.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module again
    main()
