"""Leaf utilities every layer may use: atomic files, progress bars, precisions and
the CPU's bfloat16 kernels, console notes, self-contained HTML, dataclass fields.
Nothing here imports the rest of the package."""
