"""Built-in plugins. Each module implements the same pluggy hooks a third-party plugin does."""
