"""Client selection: the random draw as before, Oort on a hand-made utility table, options and state."""

import math

import pytest

from fl_ee.core.config import config_from_dict
from fl_ee.core.errors import UserError
from fl_ee.core.seeding import Stream
from strategies import ClientInfo, DepthAwareStrategy, build_strategy
from strategies.base import Feedback, Selection
from strategies.selection import Explored, Oort, oort_score, oort_utility

POOL = [ClientInfo(c, c, "t", 1, 10, 2) for c in range(7)]
BONUS = math.sqrt(0.1 * math.log(3) / 2)  # round 3, last trained in round 2: 0.2344
TABLE = {0: Explored(10.0, 2, 5.0), 1: Explored(8.0, 2, 5.0), 2: Explored(1.0, 2, 5.0), 3: Explored(0.5, 2, 5.0),
         4: Explored(12.0, 2, 20.0)}  # client 4: the most useful, but 4x the preferred 10 s


def _oort(**options):
    oort = Oort(seed=3, preferred_duration_s=10.0, **options)
    oort.explored = dict(TABLE)
    return oort


def test_random_selection_draws_as_the_strategy_always_sampled():
    strategy = DepthAwareStrategy(fraction_train=3 / 7, seed=5)
    strategy.register_clients(POOL)
    for rnd in range(1, 6):
        assert strategy.sample_train(rnd) == strategy.sample(rnd, 3 / 7, Stream.SAMPLE_TRAIN)
        assert Selection(5).select(rnd, POOL, 3) == strategy.sample_train(rnd)


def test_oort_scores_by_hand():
    assert oort_utility(20, 0.5) == 10.0  # |B| x the mean loss
    assert oort_score(TABLE[0], 3, 10.0, 2.0, 0.1) == pytest.approx(10.0 + BONUS)  # as fast as preferred: no penalty
    assert oort_score(TABLE[4], 3, 10.0, 2.0, 0.1) == pytest.approx((12.0 + BONUS) * (10 / 20) ** 2)  # 3.06
    assert oort_score(TABLE[4], 3, 10.0, 0.0, 0.1) == pytest.approx(12.0 + BONUS)  # alpha 0: speed ignored


def test_oort_exploits_the_top_scores_on_a_hand_made_utility_table():
    tried = POOL[:5]
    # scores 10.23, 8.23, 1.23, 0.73 and 3.06 (client 4 penalised): the cutoff 0.95 x 8.23 admits clients 0 and 1 alone
    assert [c.client_id for c in _oort(epsilon=0.0, min_epsilon=0.0).select(3, tried, 2)] == [0, 1]
    # without the speed penalty client 4 leads: cutoff 0.95 x 10.23 admits 4 and 0
    assert [c.client_id for c in _oort(epsilon=0.0, min_epsilon=0.0, alpha=0.0).select(3, tried, 2)] == [0, 4]
    # a low cutoff admits 0, 1 and 4 (scores >= 0.3 x 8.23, not client 2's 1.23): two of them, by chance ~ score
    low = _oort(epsilon=0.0, min_epsilon=0.0, cutoff=0.3)
    drawn = [tuple(c.client_id for c in low.select(rnd, tried, 2)) for rnd in range(3, 43)]
    assert set(drawn) <= {(0, 1), (0, 4), (1, 4)} and (0, 1) in drawn and 0 < sum(4 in d for d in drawn) < 40


def test_oort_explores_untried_clients_with_a_decaying_share():
    oort = _oort(epsilon=0.5, epsilon_decay=0.98, min_epsilon=0.2)
    assert oort.exploration(3) == pytest.approx(0.5 * 0.98 ** 2) and oort.exploration(200) == 0.2
    chosen = [c.client_id for c in oort.select(3, POOL, 3)]  # round(0.48 x 3) = 1 slot for the untried 5 and 6
    assert chosen[:2] == [0, 1] and len(chosen) == 3 and chosen[2] in (5, 6)
    assert [c.client_id for c in Oort(seed=3).select(1, POOL[:4], 4)] == [0, 1, 2, 3]  # nothing tried: all explore
    assert oort.select(3, POOL, 3) == oort.select(3, POOL, 3)  # seeded by round


def test_oort_feedback_and_state_round_trip():
    oort = Oort(seed=0)
    oort.feedback(4, [Feedback(2, 30, 0.5, 7.5), Feedback(6, 10, 2.0, 1.0)])
    assert oort.explored == {2: Explored(15.0, 4, 7.5), 6: Explored(20.0, 4, 1.0)}
    assert oort.preferred_s() == pytest.approx(4.25)  # 0: the tried clients' median duration
    again = Oort(seed=0)
    again.load_state_dict(oort.state_dict())
    assert again.explored == oort.explored
    with pytest.raises(ValueError, match="keeps no state"):
        Selection(0).load_state_dict(oort.state_dict())


def test_selection_is_configured_by_name_and_options_in_one_line():
    assert type(build_strategy(config_from_dict({})).selection) is Selection
    strategy = build_strategy(config_from_dict({"strategy": {"selection": "oort", "selection_options": {"alpha": 1}}}))
    assert isinstance(strategy.selection, Oort) and strategy.selection.alpha == 1
    for raw, needle in [({"selection": "fastest"}, "strategy.selection: unknown selection 'fastest'; choose one of"),
                        ({"selection": "oort", "selection_options": {"cutoff": 2}},
                         "strategy.selection_options.cutoff: must be a number in [0, 1], got 2"),
                        ({"selection": "oort", "selection_options": {"speed": 2}},
                         "strategy.selection_options.speed: unknown option for oort")]:
        with pytest.raises(UserError) as error:
            build_strategy(config_from_dict({"strategy": raw}))
        assert str(error.value).startswith(needle) and "\n" not in str(error.value)
