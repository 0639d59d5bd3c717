import numpy as np
import pytest

from fl_ee.core.errors import UserError
from partitions import client_splits, local_split, partition_indices, unseen_clients
from sims.tiers import assign_tiers, tier_counts

LABELS = np.repeat(np.arange(10), 60)  # 600 samples, label-sorted


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_and_cover_the_data(scheme):
    parts = partition_indices(LABELS, 8, scheme, alpha=0.5, shards_per_client=2, seed=0)
    joined = np.concatenate(parts)
    assert len(parts) == 8
    assert len(joined) == len(set(joined.tolist()))
    if scheme != "shards":  # pathological splits may leave a class unassigned
        assert sorted(joined.tolist()) == list(range(len(LABELS)))


def test_iid_is_balanced_and_mixes_labels():
    parts = partition_indices(LABELS, 6, "iid", 0.5, 2, seed=0)
    assert {len(p) for p in parts} == {100}
    assert all(len(np.unique(LABELS[p])) >= 8 for p in parts)


def test_shards_give_each_client_exactly_k_classes():
    parts = partition_indices(LABELS, 10, "shards", 0.5, shards_per_client=3, seed=1)
    assert [len(np.unique(LABELS[p])) for p in parts] == [3] * 10


def test_dirichlet_skews_labels_more_for_smaller_alpha():
    def skew(alpha):
        parts = partition_indices(LABELS, 10, "dirichlet", alpha, 2, seed=0)
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])

    assert skew(0.1) > skew(100.0)


def test_partitions_are_deterministic_by_seed():
    a = partition_indices(LABELS, 5, "dirichlet", 0.5, 2, seed=3)
    b = partition_indices(LABELS, 5, "dirichlet", 0.5, 2, seed=3)
    c = partition_indices(LABELS, 5, "dirichlet", 0.5, 2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_local_split_holds_out_a_test_share_from_the_clients_own_samples():
    indices = np.arange(100, 150)
    split = local_split(indices, 0.2, np.random.default_rng(0))
    assert len(split.test) == 10 and len(split.train) == 40
    assert set(split.train) | set(split.test) == set(indices) and not set(split.train) & set(split.test)
    tiny = local_split(np.array([7, 9]), 0.2, np.random.default_rng(0))
    assert len(tiny.test) == 1 and len(tiny.train) == 1


def test_client_splits_are_cached_and_consistent():
    a = client_splits(LABELS, 4, "iid", 0.5, 2, 0.25, 0)
    assert a is client_splits(LABELS, 4, "iid", 0.5, 2, 0.25, 0)
    assert all(len(s.test) == 38 for s in a)  # round(0.25 * 150)


def test_impossible_splits_are_user_errors():
    with pytest.raises(UserError) as info:
        partition_indices(LABELS, 400, "iid", 0.5, 2, seed=0)
    assert info.value.key == "data.num_clients"
    with pytest.raises(UserError) as info:
        partition_indices(LABELS, 4, "shards", 0.5, shards_per_client=11, seed=0)
    assert info.value.key == "data.shards_per_client"
    with pytest.raises(UserError, match="use at most 300 clients") as info:  # 600 samples, 2 each at least
        partition_indices(LABELS, 301, "dirichlet", 0.5, 2, seed=0)
    assert info.value.key == "data.num_clients"


def test_seed_streams_never_coincide_across_runs_or_clients():
    # under "seed + 1 + cid", client 1 of seed 0 and client 0 of seed 1 drew the same local split
    splits = {s: client_splits(LABELS, 4, "iid", 0.5, 2, 0.25, s) for s in (0, 1)}
    same = np.array_equal(np.sort(splits[0][1].test), np.sort(splits[1][0].test))
    assert not same
    from fl_ee.core.seeding import Stream, derive_seed

    assert len({derive_seed(0, s) for s in Stream}) == len(Stream)
    assert derive_seed(0, Stream.LOCAL_SPLIT, 1) != derive_seed(1, Stream.LOCAL_SPLIT, 0)


def test_tier_counts_follow_shares_by_largest_remainder():
    assert tier_counts([0.3, 0.4, 0.3], 20) == [6, 8, 6]
    assert tier_counts([0.3, 0.4, 0.3], 7) == [2, 3, 2]  # 2.1, 2.8, 2.1 -> the 0.8 remainder wins
    assert tier_counts([1 / 3] * 3, 10) == [4, 3, 3]  # ties go to the earlier tier
    assert tier_counts([1.0], 5) == [5]


def test_tier_assignment_is_a_seeded_shuffle_with_exact_counts():
    a = assign_tiers([0.3, 0.4, 0.3], 20, seed=0)
    assert np.bincount(a).tolist() == [6, 8, 6]
    assert np.array_equal(a, assign_tiers([0.3, 0.4, 0.3], 20, seed=0))
    assert not np.array_equal(a, assign_tiers([0.3, 0.4, 0.3], 20, seed=1))


def test_client_splits_are_cached_on_disk(tmp_path, monkeypatch):
    from partitions.split import _cached_splits

    monkeypatch.setenv("FL_EE_CACHE", str(tmp_path))
    _cached_splits.cache_clear()
    first = client_splits(LABELS, 5, "dirichlet", 0.3, 2, 0.2, 7)
    assert len(list(tmp_path.glob("splits-*.npz"))) == 1
    _cached_splits.cache_clear()
    second = client_splits(LABELS, 5, "dirichlet", 0.3, 2, 0.2, 7)  # read from disk
    assert all(np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test) for a, b in zip(first, second))
    client_splits(LABELS, 5, "dirichlet", 0.3, 2, 0.2, 8)  # another seed, another entry
    assert len(list(tmp_path.glob("splits-*.npz"))) == 2
    _cached_splits.cache_clear()


def test_unseen_clients_are_a_seeded_draw_of_the_configured_count():
    from fl_ee.core.config import config_from_dict

    assert [config_from_dict({"data": {"num_clients": n, "unseen_fraction": f}}).data.unseen_count
            for n, f in [(20, 0.0), (20, 0.01), (20, 0.25), (20, 0.29), (10, 0.35), (7, 0.5)]] == [0, 1, 5, 6, 4, 4]
    drawn = unseen_clients(20, 5, seed=0)
    assert len(drawn) == 5 and drawn <= set(range(20))
    assert unseen_clients(20, 5, seed=0) == drawn  # the same seed holds out the same clients
    assert len({unseen_clients(20, 5, seed=s) for s in range(5)}) > 1  # another seed, others
    assert unseen_clients(20, 0, seed=0) == frozenset()
