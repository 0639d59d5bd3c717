"""Non-IID splits of a labelled dataset over clients, each with a local train/test split."""

from partitions.split import ClientSplit, client_splits, local_split, partition_indices

__all__ = ["ClientSplit", "client_splits", "local_split", "partition_indices"]
