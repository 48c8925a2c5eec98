"""Tests of group-relative advantages (docs/definitions.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch

from clipctl.algo.advantages import ADV_NORMS, group_advantages, zero_std_group_frac


def naive_advantages(rewards: list[float], group_size: int, norm: str) -> list[float]:
    """docs/definitions.md section 3 written literally, one group and one response at a time."""
    out = []
    for g in range(len(rewards) // group_size):
        group = rewards[g * group_size : (g + 1) * group_size]
        mean = sum(group) / len(group)
        if norm == "none":
            out.extend(r - mean for r in group)
        else:
            if len(group) < 2:
                out.extend(r - mean for r in group)
                continue
            var = sum((r - mean) ** 2 for r in group) / (len(group) - 1)
            std = math.sqrt(var)
            out.extend((r - mean) / (std + 1e-6) for r in group)
    return out


# --- hand-computed -----------------------------------------------------------


def test_none_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=4, norm="none")
    # group 0: [1, 0, 0, 1], mean 2/4 = 0.5 -> [0.5, -0.5, -0.5, 0.5]
    # group 1: [1, 1, 0, 2], mean 4/4 = 1.0 -> [0, 0, -1, 1]
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, -1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    assert adv.dtype == torch.float64


def test_none_is_the_default():
    rewards = torch.tensor([1.0, 0.0, 3.0, 5.0])
    torch.testing.assert_close(group_advantages(rewards, 2), group_advantages(rewards, 2, "none"))


def test_group_std_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=4, norm="group_std")
    # group 0: mean 0.5, centred [0.5, -0.5, -0.5, 0.5];
    #   unbiased var = (4 * 0.25) / (4 - 1) = 1/3, std = sqrt(1/3) = 0.5773502691896258
    #   A = +-0.5 / (0.5773502691896258 + 1e-6) = +-0.8660239038
    # group 1: all equal -> centred 0, std 0 -> 0 / 1e-6 = 0
    a = 0.5 / (0.5773502691896258 + 1e-6)
    assert a == pytest.approx(0.8660239038, abs=1e-9)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)


def test_group_std_uses_unbiased_std_not_population_std():
    rewards = torch.tensor([0.0, 2.0], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=2, norm="group_std")
    # mean 1, centred [-1, 1]; unbiased var = (1 + 1) / (2 - 1) = 2, std = sqrt(2) = 1.4142135624
    # A = +-1 / (1.4142135624 + 1e-6) = +-0.70710628
    # (the population std would be 1 and give +-1 / (1 + 1e-6))
    a = 1.0 / (math.sqrt(2.0) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([-a, a], dtype=torch.float64))
    assert adv[1].item() == pytest.approx(0.70710628, abs=1e-8)


@pytest.mark.parametrize("norm", ["none", "group_std"])
def test_group_size_one_gives_zero_advantage(norm):
    rewards = torch.tensor([1.0, 0.0, 5.0])
    adv = group_advantages(rewards, group_size=1, norm=norm)
    # each response is its own group: r - mean = 0, no NaN from an undefined std
    torch.testing.assert_close(adv, torch.zeros(3))


def test_integer_rewards_become_float():
    adv = group_advantages(torch.tensor([1, 0, 0, 0]), group_size=4)
    # mean 1/4: [0.75, -0.25, -0.25, -0.25]
    assert adv.is_floating_point()
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_advantages_sum_to_zero_per_group():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6 * 5, generator=gen, dtype=torch.float64)
    for norm in ADV_NORMS:
        adv = group_advantages(rewards, 5, norm).view(6, 5)
        torch.testing.assert_close(adv.sum(1), torch.zeros(6, dtype=torch.float64))


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize("n, group_size", [(6, 4), (5, 2), (4, 0), (4, -2), (3, 6)])
def test_bad_sizes_raise(n, group_size):
    with pytest.raises(ValueError, match=r"group_size"):
        group_advantages(torch.zeros(n), group_size)


def test_bad_size_message_names_both_values():
    with pytest.raises(ValueError, match=r"\(6\).*\(4\)"):
        group_advantages(torch.zeros(6), 4)


def test_rewards_must_be_1d():
    with pytest.raises(ValueError, match=r"1-D"):
        group_advantages(torch.zeros(2, 4), 4)


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ValueError, match=r"'grpo'") as info:
        group_advantages(torch.zeros(4), 2, norm="grpo")
    for name in ADV_NORMS:
        assert name in str(info.value)
    assert set(ADV_NORMS) == {"none", "group_std"}


# --- naive loop --------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "group_std"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_groups, group_size", [(1, 8), (3, 4), (5, 2), (4, 1), (2, 7)])
def test_matches_naive_loop(norm, seed, num_groups, group_size):
    gen = torch.Generator().manual_seed(seed)
    # a mix of Bernoulli-like and Gaussian rewards, so some groups have zero std
    rewards = torch.where(
        torch.rand(num_groups * group_size, generator=gen) < 0.5,
        torch.randint(0, 2, (num_groups * group_size,), generator=gen).double(),
        torch.randn(num_groups * group_size, generator=gen, dtype=torch.float64),
    )
    got = group_advantages(rewards, group_size, norm)
    expected = torch.tensor(naive_advantages(rewards.tolist(), group_size, norm), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# --- zero_std_group_frac -----------------------------------------------------


def test_zero_std_group_frac_hand_computed():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    # groups of 3: [1,1,1] same, [0,1,0] differ, [0,0,0] same, [0.5,0.5,0.5] same -> 3/4
    assert zero_std_group_frac(rewards, 3).item() == pytest.approx(0.75)
    # groups of 6: [1,1,1,0,1,0] differ, [0,0,0,0.5,0.5,0.5] differ -> 0/2
    assert zero_std_group_frac(rewards, 6).item() == 0.0
    # groups of 1: every group is trivially constant -> 1
    assert zero_std_group_frac(rewards, 1).item() == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_groups, group_size", [(5, 4), (8, 2), (3, 1)])
def test_zero_std_group_frac_matches_naive_loop(seed, num_groups, group_size):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (num_groups * group_size,), generator=gen).float()
    values = rewards.tolist()
    same = 0
    for g in range(num_groups):
        group = values[g * group_size : (g + 1) * group_size]
        same += all(r == group[0] for r in group)
    assert zero_std_group_frac(rewards, group_size).item() == pytest.approx(same / num_groups)


def test_zero_std_groups_get_zero_advantage():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, 2, "group_std").view(3, 2)
    # group 0 and 2 are constant; their advantages are exactly 0, group 1 is not
    assert zero_std_group_frac(rewards, 2).item() == pytest.approx(2 / 3)
    assert torch.all(adv[0] == 0) and torch.all(adv[2] == 0) and torch.all(adv[1] != 0)
