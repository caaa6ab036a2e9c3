"""selfinstruct: Self-Instruct as a service."""

__version__ = "0.1.0"
