"""Built-in inputs. Each registers through the same pluggy hooks a third-party plugin does."""
