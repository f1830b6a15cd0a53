"""Correspondence solvers, losses and CRF evidence (docs/method.md §5.4-5.6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from discobox.modeling.correspondence.evidence import (
    cross_image_evidence,
    paste_evidence,
    superres_transport,
)
from discobox.modeling.correspondence.solver import (
    cosine_affinity,
    faithful_corr_loss,
    grid_centers,
    hough_voting,
    infonce_corr_loss,
    locality_mask,
    pass_message,
    sinkhorn,
    solve_faithful,
    solve_sinkhorn,
)


def _feats(seed=0, k=5, c=16, s=7):
    g = torch.Generator().manual_seed(seed)
    return F.relu(torch.randn((c, s, s), generator=g)), F.relu(torch.randn((k, c, s, s),
                                                                            generator=g))


def test_sinkhorn_marginals_converge():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand((2, 30, 40), generator=g)
    pi = sinkhorn(cost, eps=0.05, iters=300)
    assert torch.allclose(pi.sum(-1), torch.full((2, 30), 1 / 30), atol=1e-5)
    assert torch.allclose(pi.sum(-2), torch.full((2, 40), 1 / 40), atol=1e-5)
    mu = torch.rand(30, generator=g) + 0.1
    nu = torch.rand(40, generator=g) + 0.1
    mu, nu = mu / mu.sum(), nu / nu.sum()
    pi = sinkhorn(cost[0], eps=0.1, mu=mu, nu=nu, iters=300)
    assert torch.allclose(pi.sum(-1), mu, atol=1e-5)
    assert torch.allclose(pi.sum(-2), nu, atol=1e-5)


def test_sinkhorn_one_iteration_matches_scot_update():
    """SCOT runs one iteration: rows are exact after it, columns only approximately."""
    g = torch.Generator().manual_seed(1)
    cost = torch.rand((20, 25), generator=g)
    pi = sinkhorn(cost, eps=0.05, iters=1)
    k = torch.exp(-cost / 0.05).double()
    a = torch.full((20, 1), 1 / 20, dtype=torch.float64)
    b = (1 / 25) / (k.t() @ a)
    a = (1 / 20) / (k @ b)
    ref = a * k * b.t()
    assert torch.allclose(pi.double(), ref, rtol=1e-4, atol=1e-9)
    assert torch.allclose(pi.sum(-1), torch.full((20,), 1 / 20), atol=1e-6)


def test_sinkhorn_is_stable_for_tiny_eps():
    cost = torch.rand(10, 12) * 5
    assert torch.isfinite(sinkhorn(cost, eps=1e-3, iters=20)).all()


def test_locality_mask_is_chebyshev_radius_4():
    d = locality_mask(7, 4)
    assert d.shape == (49, 49) and torch.equal(d, d.t())
    assert abs(float(d.mean()) - 0.77) < 0.01  # "about 77 % of the pairs" (§5.4)
    assert d[0, 4 * 7 + 4] == 1 and d[0, 5] == 0 and d[0, 5 * 7] == 0


def test_pass_message_equals_brute_force():
    g = torch.Generator().manual_seed(2)
    s = 4
    v = torch.rand((2, s * s, s * s), generator=g)
    ref = torch.zeros_like(v)
    for p in range(s * s):
        for q in range(s * s):
            vals = []
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    py, px, qy, qx = p // s - dy, p % s - dx, q // s - dy, q % s - dx
                    if all(0 <= t < s for t in (py, px, qy, qx)):
                        vals.append(v[:, py * s + px, qy * s + qx])
            ref[:, p, q] = torch.stack(vals).mean(0)
    assert torch.allclose(pass_message(v), ref, atol=1e-6)


def test_superres_equals_separable_bilinear_and_keeps_row_sums():
    g = torch.Generator().manual_seed(3)
    t = torch.rand((2, 49, 49), generator=g)
    t = t / t.sum(-1, keepdim=True)
    u = superres_transport(t, 28)
    assert u.shape == (2, 784, 784)
    assert torch.allclose(u.sum(-1), torch.ones(2, 784), atol=1e-4)
    # Reference: upsample a single (source, target) delta in both grids.
    i, j = 10, 30
    e = torch.zeros(1, 49, 49)
    e[0, i, j] = 1.0
    up = lambda x: F.interpolate(x.view(1, 1, 7, 7), size=(28, 28), mode="bilinear",  # noqa: E731
                                 align_corners=False).flatten()
    ref = torch.outer(up(F.one_hot(torch.tensor(i), 49).float()),
                      up(F.one_hot(torch.tensor(j), 49).float())) * 49 / 784
    assert torch.allclose(superres_transport(e, 28)[0], ref, atol=1e-7)


@pytest.mark.parametrize("solver", ["faithful", "sinkhorn"])
def test_identity_pair_gives_identity_matches(solver):
    f0, _ = _feats(4)
    f1 = f0[None].repeat(3, 1, 1, 1)
    if solver == "faithful":
        cu, t = solve_faithful(f0, f1)
    else:
        cu, t = solve_sinkhorn(f0, f1, iters=20)
    assert cu.shape == t.shape == (3, 49, 49)
    assert torch.equal(t.argmax(-1), torch.arange(49).expand(3, -1))
    assert torch.allclose(t.sum(-1), torch.ones(3, 49), atol=1e-3)


def test_faithful_solver_and_double_softmax_loss():
    f0, f1 = _feats(5)
    f0.requires_grad_(True)
    cu, t = solve_faithful(f0, f1)
    assert float(cu.detach().min()) >= 0  # ReLU'd features
    assert t.requires_grad  # gradient path through Cu (§5.4 step 5)
    loss = faithful_corr_loss(cu, t)
    assert abs(float(loss.detach()) - math.log(49)) < 0.05  # ~3.89 (§5.5)
    loss.backward()
    assert f0.grad is not None and float(f0.grad.abs().sum()) > 0


def test_infonce_prefers_correct_assignment_and_uses_negatives():
    f0, _ = _feats(6)
    f0.requires_grad_(True)
    f1 = f0.detach()[None].repeat(2, 1, 1, 1)
    eye = torch.eye(49).expand(2, -1, -1)
    good = infonce_corr_loss(f0, f1, eye, temperature=0.1)
    bad = infonce_corr_loss(f0, f1, eye.roll(1, dims=-1), temperature=0.1)
    assert float(good.detach()) < float(bad.detach())
    negs = f0.detach().flatten(1).t()[:10]
    with_neg = infonce_corr_loss(f0, f1, eye, temperature=0.1, negatives=negs)
    assert float(with_neg.detach()) > float(good.detach())
    w = torch.zeros(49)
    w[0] = 1
    only0 = infonce_corr_loss(f0, f1, eye, temperature=0.1, weights=w)
    logits = F.normalize(f0.detach().flatten(1).t(), dim=1)
    row = logits[0] @ logits.t() / 0.1
    assert torch.allclose(only0, F.cross_entropy(row[None], torch.tensor([0])), atol=1e-5)
    with_neg.backward()
    assert f0.grad is not None


def test_hough_voting_boosts_the_consistent_offset():
    xy = grid_centers(5)
    n = 25
    votes = torch.full((n, n), 0.01)
    # All cells agree on a shift of +1 in x, except cell 0 whose best vote is an outlier.
    for i in range(n):
        x, y = i % 5, i // 5
        if x + 1 < 5:
            votes[i, y * 5 + x + 1] = 1.0
    votes[0, 24] = 1.2
    conf = hough_voting(votes, xy, xy, src_size=(5, 5), trg_size=(5, 5), cell_size=1.0,
                        filter_size=3)
    assert votes[0].argmax() == 24 and conf[0].argmax() == 1


def test_cross_image_evidence_follows_masks():
    f0, f1 = _feats(7, k=2)
    cu, t = solve_faithful(f0, f1)
    m0 = torch.zeros(28, 28)
    m0[:, :14] = 0.95  # query confident foreground on the left half
    m1 = torch.full((2, 28, 28), 0.95)
    ev = cross_image_evidence(t, cu, m0, m1)
    assert ev.shape == (2, 28, 28)
    bg, fg = ev
    assert float(fg[:, :14].min()) > 0 and float(fg[:, 14:].abs().max()) == 0
    assert float(bg.abs().max()) == 0  # retrieved objects are all foreground
    assert float(fg.max()) <= 0.9 + 1e-5  # clamp(m1, 0.1, 0.9), rows sum to ~1


def test_paste_evidence_places_resized_patch():
    ev = torch.ones(2, 28, 28)
    out = paste_evidence(ev, torch.tensor([3.0, 2.0, 9.0, 6.0]), (10, 12))
    assert out.shape == (2, 10, 12)
    assert float(out[:, 2:6, 3:9].min()) == 1.0
    assert float(out.sum()) == 2 * 4 * 6


def test_cosine_affinity_is_scale_invariant():
    f0, f1 = _feats(8)
    assert torch.allclose(cosine_affinity(f0, f1), cosine_affinity(3 * f0, 2 * f1), atol=1e-4)


def test_cross_image_evidence_equals_dense_formula():
    """The prefix-sum implementation equals the literal [K, 784, 784] formula of §5.6."""
    g = torch.Generator().manual_seed(9)
    t, cu = torch.rand((3, 49, 49), generator=g), torch.rand((3, 49, 49), generator=g)
    m0, m1 = torch.rand((28, 28), generator=g), torch.rand((3, 28, 28), generator=g)
    tt = t * cu.softmax(-1)
    tu = superres_transport(tt / (tt.sum(-1, keepdim=True) + 1e-5), 28)
    q, k = m0.flatten(), m1.flatten(1)
    fg = (tu * ((q[None, :, None] * k[:, None, :]) > 0.5) * k.clamp(0.1, 0.9)[:, None]).sum(-1)
    bg = (tu * (((1 - q)[None, :, None] * (1 - k)[:, None, :]) > 0.5)
          * (1 - k).clamp(0.1, 0.9)[:, None]).sum(-1)
    ref = torch.stack([bg.mean(0), fg.mean(0)]).view(2, 28, 28)
    assert torch.allclose(cross_image_evidence(t, cu, m0, m1), ref, atol=1e-6)
