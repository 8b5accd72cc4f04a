"""The run folder: its files and their atomic writes, checksums, the lock, the saved weights, and `RunFolder`, the
one way to open a finished run."""
