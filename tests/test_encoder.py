import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scrobust_sc._constants import CLS_TOKEN, N_SPECIAL_TOKENS
from scrobust_sc.nn import GeneTransformer


def _inputs(b=3, length=7, n_genes=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n_genes, generator=g)[:length] for _ in range(b)])
    values = torch.rand(b, length, generator=g) * 3 + 0.1
    valid = torch.ones(b, length, dtype=torch.bool)
    return idx, values, valid


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("value_encoding", ["mlp", "published"])
@settings(max_examples=15, deadline=None)
@given(extra=st.integers(1, 9), seed=st.integers(0, 100))
def test_padding_never_changes_the_output(n_layers, value_encoding, extra, seed):
    torch.manual_seed(seed)
    enc = GeneTransformer(20, 16, 2, n_layers, value_encoding=value_encoding).eval()
    idx, values, valid = _inputs(seed=seed)
    ref = enc(idx, values, valid)
    pad_idx = torch.cat([idx, torch.randint(0, 20, (3, extra))], dim=1)
    pad_val = torch.cat([values, torch.rand(3, extra) * 5], dim=1)  # garbage in the padding
    pad_valid = torch.cat([valid, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(pad_idx, pad_val, pad_valid), ref, rtol=1e-5, atol=1e-5)
    _, attn = enc(pad_idx, pad_val, pad_valid, return_attention=True)
    assert torch.all(attn[:, -extra:] == 0)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_changing_one_value_changes_the_cls_output(n_layers):
    torch.manual_seed(0)
    enc = GeneTransformer(20, 16, 2, n_layers, value_encoding="mlp").eval()
    idx, values, valid = _inputs()
    changed = values.clone()
    changed[:, 2] *= 3.0
    for layer in range(1, n_layers + 1):
        a, b = enc(idx, values, valid, layer=layer), enc(idx, changed, valid, layer=layer)
        assert torch.all((a - b).norm(dim=1) > 1e-4 * a.norm(dim=1))


def test_published_one_layer_pre_ln_encoder_is_blind_to_values():
    # METHOD.md section 12: LayerNorm cancels the value scaling; kept as a documented option
    torch.manual_seed(0)
    enc = GeneTransformer(20, 16, 2, 1, value_encoding="published").eval()
    idx, values, valid = _inputs()
    torch.testing.assert_close(enc(idx, values, valid), enc(idx, values * 5.0, valid), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("norm_first", [True, False])
def test_cls_only_last_layer_equals_full_computation(n_layers, norm_first):
    # the encoder's last block attends from the CLS alone, with its own kernel: outputs,
    # attention and gradients must be those of every block run in full on the whole sequence
    torch.manual_seed(0)
    enc = GeneTransformer(20, 16, 2, n_layers, dropout=0.0, norm_first=norm_first)
    idx, values, valid = _inputs()
    valid[1, 5:] = False  # padding in one cell
    x = enc.embedding(idx, values)
    keep = torch.cat([torch.ones(3, 1, dtype=torch.bool), valid], dim=1)
    for i, block in enumerate(enc.blocks):
        x, attn = block(x, keep, return_attention=i == n_layers - 1)
    full = x[:, 0]
    grads_full = torch.autograd.grad(full.square().sum(), list(enc.parameters()), allow_unused=True)
    fast, fast_attn = enc(idx, values, valid, return_attention=True)
    grads_fast = torch.autograd.grad(fast.square().sum(), list(enc.parameters()), allow_unused=True)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_attn, attn[:, 1:], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_fast, grads_full, strict=True):
        if b is None:  # the token outputs of the last block's feed-forward are never computed
            continue
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b), b, rtol=1e-4, atol=1e-5)


def test_attention_is_a_distribution_over_tokens():
    enc = GeneTransformer(20, 16, 2, 1).eval()
    idx, values, valid = _inputs()
    _, attn = enc(idx, values, valid, return_attention=True)
    assert attn.shape == idx.shape
    assert torch.all(attn >= 0) and torch.all(attn.sum(1) <= 1 + 1e-6)  # the CLS token takes the rest


def test_bad_layer_is_refused():
    enc = GeneTransformer(20, 16, 2, 2)
    with pytest.raises(ValueError, match="layer must be"):
        enc(*_inputs(), layer=3)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_inference_in_chunks_equals_the_whole_batch(n_layers, monkeypatch):
    # without gradients a big batch runs in chunks of cells, so memory does not grow with it
    torch.manual_seed(0)
    enc = GeneTransformer(20, 16, 2, n_layers).eval()
    idx, values, valid = _inputs(b=10)
    valid[3, 4:] = False  # a shorter cell among them
    with torch.no_grad():
        whole, whole_attn = enc(idx, values, valid, return_attention=True)
    calls = []
    original = GeneTransformer._forward

    def counting(self, *args):
        calls.append(args[0].shape[0])
        return original(self, *args)

    monkeypatch.setattr(GeneTransformer, "_forward", counting)
    monkeypatch.setattr(GeneTransformer, "inference_chunk_elements", 3 * 8 * 16)  # 3 cells of 7 tokens + CLS
    with torch.no_grad():
        chunked, chunked_attn = enc(idx, values, valid, return_attention=True)
        assert torch.equal(enc(idx, values, valid), chunked)
    assert calls[:4] == [3, 3, 3, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_attn, whole_attn, rtol=1e-5, atol=1e-6)
    calls.clear()
    enc(idx, values, valid).sum().backward()  # training keeps the batch whole for autograd
    assert calls == [10]


@pytest.mark.parametrize("value_encoding", ["mlp", "published"])
def test_embedding_parts_are_the_published_token_and_the_value_encoding(value_encoding):
    # only the selected rows are normalised now; the tokens must stay x * W[g] / ||W[g]|| (+ f(x))
    torch.manual_seed(0)
    enc = GeneTransformer(20, 16, 2, 1, value_encoding=value_encoding)
    idx, values, _ = _inputs()
    cls, tokens = enc.embedding.parts(idx, values)
    unit = torch.nn.functional.normalize(enc.embedding.weight, dim=-1)
    expected = unit[idx + N_SPECIAL_TOKENS] * values.unsqueeze(-1)
    if value_encoding == "mlp":
        expected = expected + enc.embedding.value_mlp(values.unsqueeze(-1))
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(cls, unit[CLS_TOKEN].expand(3, 1, -1))
