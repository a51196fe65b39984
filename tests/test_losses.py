"""Every advantage and loss in training.losses against numbers worked out by hand in the test."""

from __future__ import annotations

import math

import pytest
import torch

from training import losses as L

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol
    )


# -- advantages -----------------------------------------------------------------------------------------


def test_dr_grpo_subtracts_the_group_mean_without_std():
    # groups (1, 3) mean 2 and (10, 20, 30, 40)... here G=2: (10, 20) mean 15
    adv = L.dr_grpo_advantages(T([1.0, 3.0, 10.0, 20.0]), 2)
    assert torch.equal(adv, T([-1.0, 1.0, -5.0, 5.0]))


def test_grpo_std_scaling_uses_unbiased_group_std_plus_eps():
    # group (0, 2, 4): mean 2, unbiased std 2 -> (-2, 0, 2) / (2 + 1e-4)
    adv = L.group_advantages(T([0.0, 2.0, 4.0]), 3, scale="std")
    assert close(adv, T([-2.0, 0.0, 2.0]) / 2.0001)


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="does not divide the batch of 5"):
        L.dr_grpo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale must be"):
        L.group_advantages(torch.zeros(4), 2, scale="batch")


def test_rloo_leaves_one_out():
    # group (1, 2, 6): baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5
    adv = L.rloo_advantages(T([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3)
    assert close(adv, T([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]))
    with pytest.raises(ValueError, match="group_size >= 2"):
        L.rloo_advantages(T([1.0]), 1)


def test_returns_to_go_with_gamma_one_and_mask():
    r = T([[-0.1, 20.0, -10.0], [1.0, 2.0, 99.0]])
    m = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert close(L.returns_to_go(r, m), T([[9.9, 10.0, -10.0], [3.0, 2.0, 0.0]]))
    assert close(L.returns_to_go(T([[1.0, 1.0]]), gamma=0.5), T([[1.5, 1.0]]))


def test_reinforce_per_position_group_baseline():
    # group of 3 episodes, 2 turns; episode 3 has only its first turn.
    r = T([[1.0, 2.0], [3.0, 4.0], [5.0, 100.0]])
    m = T([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    # G = [[3,2],[7,4],[5,0]]; b_0 = (3+7+5)/3 = 5; b_1 = (2+4)/2 = 3 (masked episode excluded)
    adv = L.reinforce_advantages(r, 3, m)
    assert close(adv, T([[-2.0, -1.0], [2.0, 1.0], [0.0, 0.0]]))


def test_reinforce_with_discount():
    # gamma 0.5: G = [[1 + 0.5*2, 2], [3 + 0.5*4, 4]] = [[2, 2], [5, 4]]; baselines (3.5, 3)
    adv = L.reinforce_advantages(T([[1.0, 2.0], [3.0, 4.0]]), 2, gamma=0.5)
    assert close(adv, T([[-1.5, -1.0], [1.5, 1.0]]))


def test_reinforce_baseline_is_per_group():
    r = T([[1.0], [3.0], [10.0], [30.0]])
    assert close(L.reinforce_advantages(r, 2), T([[-1.0], [1.0], [-10.0], [10.0]]))


def test_reinforce_baseline_of_an_all_masked_position_is_zero():
    r = T([[1.0, 5.0], [1.0, 5.0]])
    m = T([[1.0, 0.0], [1.0, 0.0]])
    assert close(L.reinforce_advantages(r, 2, m), torch.zeros(2, 2))


def test_whiten_masked_entries():
    x = T([[1.0, 3.0], [5.0, 99.0]])
    m = T([[1.0, 1.0], [1.0, 0.0]])
    # mean 3, population var ((4+0+4)/3) = 8/3
    out = L.whiten(x, m, eps=0.0)
    s = math.sqrt(8.0 / 3.0)
    assert close(out, T([[-2.0 / s, 0.0], [2.0 / s, 0.0]]))


# -- log-probs, surrogate, KL, entropy -------------------------------------------------------------------


def test_direction_logprobs_with_temperature():
    logits = T([[[2.0, 0.0, 0.0, 0.0]]])
    # T = 2: logits/2 = (1,0,0,0); p(N) = e / (e + 3)
    lp = L.direction_logprobs(logits, T([[0]]), temperature=2.0)
    assert close(lp, T([[math.log(math.e / (math.e + 3))]]))
    lp1 = L.direction_logprobs(logits, T([[1]]))
    assert close(lp1, T([[math.log(1 / (math.exp(2) + 3))]]))


@pytest.mark.parametrize(
    ("ratio", "adv", "expected", "clipped"),
    [
        (1.0, 2.0, -2.0, 0.0),  # on-policy: -A
        (1.5, 1.0, -1.2, 1.0),  # A>0, ratio above 1+eps: clip at 1.2
        (0.5, 1.0, -0.5, 0.0),  # A>0, ratio below 1-eps: pessimistic unclipped -0.5
        (0.5, -1.0, 0.8, 1.0),  # A<0, ratio below 1-eps: clip at 0.8
        (2.0, -1.0, 2.0, 0.0),  # A<0, ratio 2: -A*rho = 2 < c*|A| = 3
        (5.0, -1.0, 3.0, 1.0),  # A<0, ratio 5: dual clip caps at 3
    ],
)
def test_dual_clip_surrogate_by_hand(ratio, adv, expected, clipped):
    loss, was_clipped = L.clipped_surrogate(T([[math.log(ratio)]]), T([[0.0]]), T([[adv]]))
    assert close(loss, T([[expected]]))
    assert was_clipped.item() == clipped


def test_plain_clip_without_dual_clip_and_log_ratio_clamp():
    loss, _ = L.clipped_surrogate(T([[math.log(5.0)]]), T([[0.0]]), T([[-1.0]]), dual_clip=None)
    assert close(loss, T([[5.0]]))
    # log-ratio 30 is clamped to 20: A>0 -> clipped at 1.2 anyway; A<0 -> dual-clipped; check the clamp
    loss, _ = L.clipped_surrogate(T([[30.0]]), T([[0.0]]), T([[-1e-9]]), dual_clip=None)
    assert close(loss, T([[math.exp(20.0) * 1e-9]]), tol=1e-6)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        L.clipped_surrogate(T([[0.0]]), T([[0.0]]), T([[1.0]]), dual_clip=0.5)


def test_surrogate_gradient_on_policy_is_minus_advantage():
    logp = T([[-1.0, -2.0]], requires_grad=True)
    loss, _ = L.clipped_surrogate(logp, logp.detach(), T([[3.0, -2.0]]))
    loss.sum().backward()
    assert close(logp.grad, T([[-3.0, 2.0]]))


def test_k3_kl_by_hand():
    # pi = 0.5, ref = 0.25: r = 0.5 -> 0.5 - ln 0.5 - 1
    assert close(L.k3_kl(T([math.log(0.5)]), T([math.log(0.25)])), T([0.5 + math.log(2.0) - 1.0]))
    # pi = 0.25, ref = 0.5: r = 2 -> 2 - ln 2 - 1
    assert close(L.k3_kl(T([math.log(0.25)]), T([math.log(0.5)])), T([1.0 - math.log(2.0)]))
    assert close(L.k3_kl(T([-0.3]), T([-0.3])), T([0.0]))


def test_policy_entropy_uniform_and_peaked():
    assert close(L.policy_entropy(torch.zeros(1, 1, 4)), T([[math.log(4.0)]]))
    # p = (1/2, 1/2, 0, 0) in the limit
    assert close(L.policy_entropy(T([[[0.0, 0.0, -1e4, -1e4]]])), T([[math.log(2.0)]]))


def test_equalized_entropy_by_hand():
    lg = T([[[0.0, math.log(3.0), 0.0, 5.0]]])
    # Path pair (N, E): softmax(0, ln3) = (1/4, 3/4); Mold and Gold singletons contribute 0
    h_pair = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert close(L.equalized_entropy(lg, T([[[0, 0, 1, 2]]])), T([[h_pair]]))
    # two pairs: Path (N, S) logits (0, 0) -> ln 2 ; Mold (E, W) logits (ln3, 5) -> softmax(ln 3, 5)
    p = 3 / (3 + math.exp(5))
    h_mold = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert close(L.equalized_entropy(lg, T([[[0, 1, 0, 1]]])), T([[math.log(2.0) + h_mold]]))
    # all four Mold, equal logits -> ln 4; all different classes but one -> 0
    assert close(L.equalized_entropy(torch.zeros(1, 1, 4), T([[[1, 1, 1, 1]]])), T([[math.log(4.0)]]))
    assert close(L.equalized_entropy(torch.zeros(1, 1, 4), T([[[0, 1, 2, 1]]])), T([[math.log(2.0)]]))
    # temperature divides the logits first: (0, ln 3)/ln 3 ... use T=2 on (0, 2 ln 3) -> (0, ln 3)
    lg2 = T([[[0.0, 2 * math.log(3.0), 7.0, 9.0]]])
    assert close(L.equalized_entropy(lg2, T([[[0, 0, 1, 2]]]), temperature=2.0), T([[h_pair]]))


def test_equalized_entropy_gradient_is_finite_with_singleton_classes():
    lg = T([[[1.0, 2.0, 3.0, 4.0]]], requires_grad=True)
    L.equalized_entropy(lg, T([[[0, 1, 2, 2]]])).sum().backward()
    assert torch.isfinite(lg.grad).all()
    assert lg.grad[0, 0, 0] == 0 and lg.grad[0, 0, 1] == 0  # singletons get no gradient


# -- aggregation and schedule -----------------------------------------------------------------------------


def test_seq_mean_token_sum():
    v = T([[1.0, 2.0], [3.0, 4.0]])
    m = T([[1.0, 1.0], [1.0, 0.0]])
    # seq sums 3 and 3, / Z=2 -> 1.5 and 1.5, mean 1.5
    assert close(L.seq_mean_token_sum(v, m, 2.0), T(1.5))
    assert close(L.token_mean(v, m), T(2.0))
    with pytest.raises(ValueError, match="Z must be > 0"):
        L.seq_mean_token_sum(v, m, 0.0)


def test_cosine_multiplier_by_hand():
    assert L.cosine_multiplier(0, 5) == 1.0
    assert L.cosine_multiplier(2, 5) == pytest.approx(0.5)
    assert L.cosine_multiplier(4, 5) == pytest.approx(0.0)
    assert L.cosine_multiplier(1, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # f = 2 reaches zero at the midpoint and stays there
    assert L.cosine_multiplier(2, 5, fraction=2.0) == pytest.approx(0.0)
    assert L.cosine_multiplier(3, 5, fraction=2.0) == pytest.approx(0.0)
    assert L.cosine_multiplier(0, 1) == 1.0
    with pytest.raises(ValueError):
        L.cosine_multiplier(0, 0)


# -- TBRM and SFT ---------------------------------------------------------------------------------------


def test_tbrm_residual_by_hand():
    logits = T([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]]])
    v = L.state_values(logits)
    assert close(v, T([[math.log(4.0), math.log(6.0)]]))
    logp = L.direction_logprobs(logits, T([[1, 0]]))  # ln 1/4, ln 3/6
    logp_ref = T([[math.log(0.5), math.log(0.5)]])
    res = L.tbrm_residuals(logp, logp_ref, T([20.0]), v[:, 0], beta=10.0)
    expected = math.log(4.0) + (math.log(0.25) + math.log(0.5)) - 2 * math.log(0.5) - 2.0
    assert close(res, T([expected]))
    # ReVal: subtract V_ref(s_1)
    res2 = L.tbrm_residuals(logp, logp_ref, T([20.0]), v[:, 0], beta=10.0, v_ref_first=T([1.0]))
    assert close(res2, T([expected - 1.0]))
    # masked turns drop out of the sums
    res3 = L.tbrm_residuals(logp, logp_ref, T([20.0]), v[:, 0], beta=10.0, mask=T([[1.0, 0.0]]))
    assert close(res3, T([math.log(4.0) + math.log(0.25) - math.log(0.5) - 2.0]))
    with pytest.raises(ValueError, match="beta must be > 0"):
        L.tbrm_residuals(logp, logp_ref, T([0.0]), v[:, 0], beta=0.0)


def test_tbrm_residual_vanishes_at_the_kl_regularised_optimum():
    # one decision, rewards per action q; optimum pi* ∝ pi_ref exp(q/β) ... with logits = log pi_ref + q/β + const
    q = T([1.0, -2.0, 0.5, 3.0])
    beta = 2.0
    log_ref = torch.log_softmax(T([0.3, -0.1, 0.2, 0.0]), -1)
    logits = (log_ref + q / beta + 7.0).reshape(1, 1, 4)  # any constant shift
    for a in range(4):
        logp = L.direction_logprobs(logits, T([[a]]))
        res = L.tbrm_residuals(
            logp, log_ref[a].reshape(1, 1), q[a].reshape(1), L.state_values(logits)[:, 0], beta=beta
        )
        # residual = logit_a - log pi_ref(a) - q_a/β = the shift 7 for every action: zero iff no shift
        assert close(res, T([7.0]))


def test_sft_best_set_loss_by_hand():
    q = T([[[1.0, 3.0, 3.0, -10.0]]])
    assert close(L.best_set_targets(q), T([[[0.0, 0.5, 0.5, 0.0]]]))
    logits = T([[[0.0, math.log(3.0), 0.0, 0.0]]])  # softmax [1/6, 1/2, 1/6, 1/6]
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(6.0)
    assert close(L.sft_best_set_loss(logits, q), T(expected))
    # it is the expected hard-target loss over the expert's uniform tie-break
    tie_break = 0.5 * (L.sft_loss(logits, T([[1]])) + L.sft_loss(logits, T([[2]])))
    assert close(L.sft_best_set_loss(logits, q), tie_break)
    # a unique best move gives exactly the hard-target loss; masked decisions do not count
    q2 = T([[[0.0, -10.0, 20.0, -0.1], [5.0, 5.0, 5.0, 5.0]]])
    logits2 = T([[[0.3, -1.0, 2.0, 0.5], [9.0, 0.0, 0.0, 0.0]]])
    assert close(L.sft_best_set_loss(logits2, q2, T([[1.0, 0.0]])), L.sft_loss(logits2[:, :1], T([[2]])))


def test_sft_loss_by_hand():
    assert close(L.sft_loss(torch.zeros(1, 2, 4), T([[0, 3]])), T(math.log(4.0)))
    logits = T([[[math.log(3.0), 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    # turn 1: -ln(3/6) = ln 2 ; turn 2 masked out
    assert close(L.sft_loss(logits, T([[0, 1]]), T([[1.0, 0.0]])), T(math.log(2.0)))
