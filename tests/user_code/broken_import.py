"""A data module whose import fails, as a user's module with a bug would."""

raise RuntimeError("this data module is broken at import")
