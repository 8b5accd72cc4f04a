"""The data: where rows come from (files, the hub), splits and label sets, data checks, and batches of tokens."""
