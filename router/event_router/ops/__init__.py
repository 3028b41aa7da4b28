"""Operator commands: the CLI, dead-letter commands, the importer, `init`, logging."""
