import numpy as np
import pytest
import torch

from scrobust_sc.nn import masked_mse, nt_xent_loss


def _nt_xent_numpy(z1, z2, t):
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / t
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        total += -sim[i, pos] + np.log(np.sum(np.exp(sim[i, others])))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_nt_xent_matches_numpy(t):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    got = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), t).item()
    assert got == pytest.approx(_nt_xent_numpy(z1, z2, t), rel=1e-6)


def test_nt_xent_needs_two_cells():
    with pytest.raises(ValueError, match="at least 2 cells"):
        nt_xent_loss(torch.ones(1, 3), torch.ones(1, 3))


def test_masked_mse_ignores_padding():
    pred = torch.tensor([[1.0, 2.0, 100.0]])
    target = torch.tensor([[0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False]])
    assert masked_mse(pred, target, valid).item() == pytest.approx(2.5)
