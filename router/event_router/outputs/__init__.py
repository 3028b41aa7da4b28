"""Built-in outputs. Each registers through the same pluggy hooks a third-party plugin does."""
