"""Context sampling: mastered contexts stop being drawn; curriculum favours tasks near the target."""

import pytest

from ript.algos.sampling import ContextSampler


def test_mastered_contexts_stop_being_drawn():
    contexts = [(0, i) for i in range(4)]
    s = ContextSampler(contexts, "curriculum", group_size=4, seed=0)
    assert {c for c in s.sample(200)} == set(contexts)
    s.record((0, 1), [True] * 4)
    s.record((0, 2), [False, True, True, True])
    drawn = s.sample(400)
    assert (0, 1) not in drawn  # all of its last K succeeded
    assert (0, 2) in drawn  # one failure among its last K: still informative
    s.record((0, 2), [True])  # now the last 4 are all successes
    assert (0, 2) not in s.sample(400)


def test_all_mastered_falls_back_to_every_context():
    s = ContextSampler([(0, 0), (0, 1)], group_size=2)
    for c in [(0, 0), (0, 1)]:
        s.record(c, [True, True])
    assert set(s.sample(50)) == {(0, 0), (0, 1)}


def test_curriculum_prefers_tasks_near_target():
    contexts = [(t, i) for t in range(3) for i in range(10)]
    s = ContextSampler(contexts, "curriculum", group_size=8, success_rate_target=0.7, seed=1)
    for i in range(10):
        s.record((0, i), [False] * 7 + [True])  # ~0.12: too hard
        s.record((1, i), [True] * 5 + [False] * 2 + [True])  # ~0.75: near target
        s.record((2, i), [True] * 7 + [False])  # ~0.88: close to mastered
    counts = [0, 0, 0]
    for task, _ in s.sample(3000):
        counts[task] += 1
    assert counts[1] > counts[2] > counts[0]
    uniform = ContextSampler(contexts, "uniform", seed=1)
    for c in contexts:
        uniform.record(c, s.outcomes[c])
    ucounts = [0, 0, 0]
    for task, _ in uniform.sample(3000):
        ucounts[task] += 1
    assert max(ucounts) - min(ucounts) < 300


def test_state_survives_resume():
    contexts = [(0, i) for i in range(5)]
    a = ContextSampler(contexts, "curriculum", group_size=2, seed=3)
    a.record((0, 0), [True, True])
    a.sample(7)
    b = ContextSampler(contexts, "curriculum", group_size=2, seed=99)
    b.load_state_dict(a.state_dict())
    assert b.is_mastered((0, 0))
    assert a.sample(20) == b.sample(20)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"strategy": "greedy"}, "uniform', 'balanced' or 'curriculum"), ({"success_rate_target": 1.5}, r"\[0, 1\]")],
)
def test_bad_settings_are_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContextSampler([(0, 0)], **kwargs)
