"""Operations: the `factory` command and what it drives.

- `cli`: argument parsing and the read-only commands (`status`, `show`, `versions`, ...).
- `loop`: chained cycles through `metaflow.Runner`, with live progress.
- `drift`: whether new data warrants a cycle.
- `doctor`, `profile`: the AWS side of scale-out.
"""
