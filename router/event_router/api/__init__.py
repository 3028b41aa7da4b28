"""The plugin API: everything a plugin may import, and the only surface the core promises to keep stable."""
