"""The tiny world's trainer (testbed/train.py): a step cut into length-sorted micro-batches is the
same step as the whole batch (loss, gradient, weights after training), with less padding."""

import pytest
import torch

from rayrejuv.data.calibration import collate
from rayrejuv.testbed.train import micro_batches, response_loss, train_pairs


def _model(vocab: int):
    from rayrejuv.testbed.tiny import build_model, tiny_config

    return build_model(tiny_config("qwen3", vocab, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                   num_kv_heads=1, head_dim=16), seed=0)


def _examples(n: int) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        T = int(torch.randint(5, 40, (1,), generator=g))  # lengths spread as the world's texts are
        out.append((torch.randint(3, 50, (T,), generator=g).tolist(), int(torch.randint(0, T - 2, (1,), generator=g))))
    return out


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_micro_batches_hold_every_row_once_sorted_with_less_padding():
    examples = _examples(13)
    micros = micro_batches(examples, 4, pad_id=0)
    assert [len(m.input_ids) for m in micros] == [4, 4, 4, 1]
    rows = [tuple(r[: int(a.sum())].tolist()) for m in micros for r, a in zip(m.input_ids, m.attention_mask)]
    assert sorted(rows) == sorted(tuple(ids) for ids, _ in examples)
    assert [len(r) for r in rows] == sorted(len(r) for r in rows)
    whole = collate(examples, 0)
    assert sum(m.input_ids.numel() for m in micros) < 0.75 * whole.input_ids.numel()
    assert sum(int(m.response_mask.sum()) for m in micros) == int(whole.response_mask.sum())
    assert len(micro_batches(examples, 1, 0)) == 1 and torch.equal(micro_batches(examples, 1, 0)[0].input_ids,
                                                                   whole.input_ids)  # 1: the batch as drawn


@pytest.mark.parametrize("count", [2, 3, 5])
def test_accumulated_micro_batches_give_the_whole_batch_loss_and_gradient(count):
    examples = _examples(10)
    model = _model(50)
    whole = response_loss(model, collate(examples, 0))
    whole.backward()
    expected = _grads(model)
    model.zero_grad()
    micros = micro_batches(examples, count, 0)
    num_tokens = sum(int(m.response_mask.sum()) for m in micros)
    total = 0.0
    for m in micros:
        part = response_loss(model, m, num_tokens)
        part.backward()
        total += part.item()
    assert total == pytest.approx(whole.item(), rel=1e-6)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_with_micro_batches_reaches_the_same_weights():
    from rayrejuv.testbed.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    g = torch.Generator().manual_seed(1)
    rows = [{"prompt": "", "response": "ab 12 + 3 = 15. " * int(torch.randint(1, 6, (1,), generator=g))}
            for _ in range(24)]
    runs = []
    for count in (1, 4):
        model = _model(len(tok))
        losses = train_pairs(model, tok, rows, epochs=2, lr=3e-3, batch_size=8, seed=0, progress=False,
                             micro_batch_count=count)
        runs.append((losses, dict(model.named_parameters())))
    (losses_1, weights_1), (losses_4, weights_4) = runs
    assert len(losses_1) == 6 and losses_4 == pytest.approx(losses_1, rel=1e-5)
    assert losses_1[-1] < losses_1[0]
    for name, w in weights_4.items():
        torch.testing.assert_close(w, weights_1[name], rtol=1e-4, atol=1e-5, msg=name)
