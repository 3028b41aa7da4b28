"""Operator commands: the CLI, dead-letter commands, how they show the spool (`show`), the importer, `init`, logging."""
