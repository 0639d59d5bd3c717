import pytest

from fl_ee.deployment.thresholds import Curve, pareto_front, pooled, select

# a hand-made curve: FLOPs fraction and accuracy at five thresholds; the deepest exit scores 0.90
CURVE = Curve(accuracy=(0.70, 0.85, 0.895, 0.88, 0.90), flops=(0.2, 0.4, 0.6, 0.5, 1.0), deepest=0.90)


def pick(rule, curve=CURVE, budget=0.5, max_drop=0.01):
    return select(curve, rule, fixed=3, budget=budget, max_drop=max_drop)


def test_budget_takes_the_most_accurate_point_within_the_budget():
    assert pick("budget", budget=0.5) == 3  # 0.88 at 0.5 beats 0.85 at 0.4 and 0.70 at 0.2
    assert pick("budget", budget=0.45) == 1
    assert pick("budget", budget=0.1) == 0  # nothing fits: the cheapest
    assert pick("budget", budget=1.0) == 4


def test_accuracy_takes_the_cheapest_point_within_max_drop_of_the_deepest():
    assert pick("accuracy", max_drop=0.01) == 2  # 0.895 >= 0.89 at 0.6; 0.88 is too low
    assert pick("accuracy", max_drop=0.02) == 3  # 0.88 >= 0.88 at 0.5
    assert pick("accuracy", max_drop=0.0) == 4
    low = Curve(accuracy=(0.5, 0.6), flops=(0.3, 1.0), deepest=0.9)
    assert pick("accuracy", curve=low) == 1  # none within: the most accurate
    assert pick("fixed") == 3


def test_pooling_weights_by_samples_and_the_pareto_front():
    a = Curve(accuracy=(1.0, 0.0), flops=(0.2, 1.0), deepest=1.0)
    b = Curve(accuracy=(0.0, 1.0), flops=(0.4, 1.0), deepest=0.5)
    both = pooled([a, b], [1, 3])
    assert both == Curve(accuracy=(0.25, 0.75), flops=(pytest.approx(0.35), 1.0), deepest=0.625)
    assert pareto_front(CURVE.accuracy, CURVE.flops) == [0, 1, 3, 2, 4]
    assert pareto_front([0.8, 0.7, 0.8, 0.9], [1.0, 2.0, 1.0, 3.0]) == [0, 3]
