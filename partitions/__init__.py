"""Non-IID splits of a labelled dataset over clients, each with a local train/test split; the unseen clients."""

from partitions.split import ClientSplit, client_splits, local_split, partition_indices, unseen_clients

__all__ = ["ClientSplit", "client_splits", "local_split", "partition_indices", "unseen_clients"]
