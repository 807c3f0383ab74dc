import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrec.config import ModelConfig, RunConfig
from diffrec.data.batching import EvalInputs, SequenceExamples, TrainExamples, history_batch
from diffrec.data.dataset import SequenceData
from diffrec.building import build_model


def rows_of(batch):
    out = []
    for seq, target, extra in zip(batch.seq.tolist(), batch.target.tolist(), batch.pad_extra.tolist()):
        real = [i for i in seq if i]
        out.append((tuple(real), target))
        assert extra == 0 or seq[0] == 0 or len(real) == len(seq)
    return out


def random_training_data(test):
    """Hypothesis over users' sequences (ids 1..20), max_len, batch size and shuffling seed."""
    return settings(max_examples=40, deadline=None)(
        given(
            seqs=st.lists(st.lists(st.integers(1, 20), min_size=3, max_size=15), min_size=1, max_size=12),
            max_len=st.integers(1, 6),
            batch_size=st.integers(1, 7),
            seed=st.integers(0, 5),
        )(test)
    )


def test_prefix_examples_by_hand():
    data = SequenceData([[1, 2, 3, 4, 5, 6], [7, 8, 9]], num_items=9)
    ex = TrainExamples(data, max_len=3)
    assert len(ex) == 3  # user 0: [1,2,3,4] -> 3 examples; user 1: [7] -> 0
    batch = next(ex.batches(10, np.random.default_rng(0), bucketing=False))
    assert sorted(rows_of(batch)) == [((1,), 2), ((1, 2), 3), ((1, 2, 3), 4)]
    assert batch.seq.shape == (3, 3) and (batch.pad_extra == 0).all()
    # the validation input is the training part, the test input adds the validation item
    valid = next(EvalInputs(data, "valid", 3).batches(10, bucketing=False))
    test = next(EvalInputs(data, "test", 3).batches(10, bucketing=False))
    assert rows_of(valid) == [((2, 3, 4), 5), ((7,), 8)]
    assert rows_of(test) == [((3, 4, 5), 6), ((7, 8), 9)]


@random_training_data
def test_bucketing_keeps_the_examples(seqs, max_len, batch_size, seed):
    data = SequenceData(seqs, num_items=20)
    ex = TrainExamples(data, max_len)
    expect = sorted((tuple(s[:-2][max(0, j - max_len) : j]), s[:-2][j]) for s in seqs for j in range(1, len(s) - 2))
    for bucketing in (False, True):
        got = []
        for batch in ex.batches(batch_size, np.random.default_rng(seed), bucketing=bucketing):
            width = batch.seq.shape[1]
            assert width <= max_len
            assert (batch.pad_extra == max_len - width).all()
            lengths = (batch.seq > 0).sum(1)
            # every row that was shorter than max_len keeps at least one padding column
            assert ((lengths == max_len) | (lengths < width)).all()
            got += rows_of(batch)
        assert sorted(got) == expect


def pairs_of(batch):
    """(history, next item) pairs of a sequence batch: one per real position."""
    out = []
    for seq, nxt, target in zip(batch.seq.tolist(), batch.next_items.tolist(), batch.target.tolist()):
        assert nxt[-1] == target  # the last position's next item is the row's target
        for j, (item, following) in enumerate(zip(seq, nxt)):
            assert (item == 0) == (following == 0)  # a next item exactly where the input is real
            if item:
                out.append((tuple(i for i in seq[: j + 1] if i), following))
    return out


def test_sequence_examples_by_hand():
    data = SequenceData([[1, 2, 3, 4, 5, 6], [7, 8, 9]], num_items=9)
    ex = SequenceExamples(data, max_len=5)
    assert len(ex) == 1 and ex.num_targets == 3  # user 0: [1,2,3,4] -> one sequence of 3 pairs; user 1: [7], none
    batch = next(ex.batches(10, np.random.default_rng(0)))
    assert batch.seq.tolist() == [[0, 1, 2, 3]]  # trimmed to the row plus one padding column
    assert batch.next_items.tolist() == [[0, 2, 3, 4]]
    assert batch.target.tolist() == [4] and batch.pad_extra.tolist() == [1] and batch.num_targets == 3
    # a training part longer than max_len + 1 keeps its last max_len pairs
    long = SequenceExamples(data, max_len=2)
    batch = next(long.batches(10, np.random.default_rng(0)))
    assert batch.seq.tolist() == [[2, 3]] and batch.next_items.tolist() == [[3, 4]] and long.num_targets == 2


@random_training_data
def test_sequence_examples_hold_the_last_pairs_of_every_user(seqs, max_len, batch_size, seed):
    """The pairs of the sequence examples are the prefix examples' pairs whose input ends within
    the last max_len positions of the training part, each history cut to that window."""
    data = SequenceData(seqs, num_items=20)
    ex = SequenceExamples(data, max_len)
    expect = []
    for s in seqs:
        part = s[:-2]
        start = max(0, len(part) - 1 - max_len)  # the window's first input position
        expect += [(tuple(part[start:j]), part[j]) for j in range(max(1, start + 1), len(part))]
    assert ex.num_targets == len(expect)
    for bucketing in (False, True):
        got = []
        for batch in ex.batches(batch_size, np.random.default_rng(seed), bucketing=bucketing):
            width = batch.seq.shape[1]
            assert width <= max_len and (batch.pad_extra == max_len - width).all()
            got += pairs_of(batch)
        assert sorted(got) == sorted(expect)


def diffurec(**changes):
    base = dict(hidden_size=16, num_blocks=2, num_heads=2, max_len=10, dropout=0.0, emb_dropout=0.0, emb_init_std=0.1)
    base.update(changes)
    torch.manual_seed(0)
    return build_model(RunConfig(model=ModelConfig(**base)), 25)


def reorder(batch, order):
    return type(batch)(batch.seq[order], batch.target[order], batch.pad_extra[order], batch.users[order])


def canonical(batch):
    """Rows sorted by (target, length) so that two batchings of the same examples line up."""
    return reorder(batch, torch.argsort(batch.target * 100 + (batch.seq > 0).sum(1)))


@pytest.mark.parametrize("mask", ["official", "key_padding", "causal"])
@pytest.mark.parametrize("positions", [False, True])
def test_trimmed_batches_compute_the_same_function(mask, positions):
    """Same outputs, with the noise fixed (delta = 0), for full padding and trimmed padding."""
    seqs = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [16, 17, 18, 19]]
    data = SequenceData(seqs, num_items=25)
    model = diffurec(attention_mask=mask, position_embedding=positions, delta=0.0)
    ex = TrainExamples(data, 10)
    full = canonical(next(ex.batches(64, np.random.default_rng(0), bucketing=False)))
    trimmed = canonical(next(ex.batches(64, np.random.default_rng(0), bucketing=True, trim=model.trims_padding_exactly)))
    if mask == "official" and positions:
        # padding keys differ by position here, so the model refuses trimming
        assert not model.trims_padding_exactly and trimmed.seq.shape == full.seq.shape
        return
    assert trimmed.seq.shape[1] < full.seq.shape[1]
    model.eval()
    s_full = model.full_sort_predict(full, torch.Generator().manual_seed(1))
    s_trim = model.full_sort_predict(trimmed, torch.Generator().manual_seed(1))
    assert torch.allclose(s_full, s_trim, atol=1e-4), (s_full - s_trim).abs().max()
    # the training loss too (dropout off, the same RNG stream)
    model.train()
    torch.manual_seed(5)
    l_full = model.calculate_loss(full)
    torch.manual_seed(5)
    l_trim = model.calculate_loss(trimmed)
    assert torch.allclose(l_full, l_trim, atol=1e-5)


def test_official_mask_depends_on_padding_but_not_on_trimming():
    """Sanity check that the invariance above is not vacuous: the official mask sees the padding."""
    model = diffurec(attention_mask="official", delta=0.0).eval()
    a = history_batch([3, 4, 5], max_len=10)
    b = history_batch([3, 4, 5], max_len=20)  # same ids, twice the padding in the full window
    assert torch.equal(a.seq, b.seq) and b.pad_extra.item() > a.pad_extra.item()
    sa = model.full_sort_predict(a, torch.Generator().manual_seed(0))
    sb = model.full_sort_predict(b, torch.Generator().manual_seed(0))
    assert not torch.allclose(sa, sb, atol=1e-4)
    key = diffurec(attention_mask="key_padding", delta=0.0).eval()
    assert torch.allclose(
        key.full_sort_predict(a, torch.Generator().manual_seed(0)), key.full_sort_predict(b, torch.Generator().manual_seed(0)), atol=1e-5
    )


def test_learned_positions_start_on_the_items_scale_and_make_order_matter():
    """The position table is drawn like the item table (else N(0, 1) positions drown N(0, 0.05²) items),
    and with it the history's order reaches the output: without positions the bidirectional
    approximator sees the earlier items as a set."""
    model = diffurec(attention_mask="key_padding", position_embedding=True, hidden_size=64, emb_init_std=0.05, delta=0.0).eval()
    assert abs(model.pos_emb.weight.std().item() - 0.05) < 0.01
    assert abs(model.item_emb.weight.std().item() - 0.05) < 0.01
    a, b = history_batch([3, 4, 5, 6], max_len=10), history_batch([5, 4, 3, 6], max_len=10)  # same last item
    for positions, differ in ((False, False), (True, True)):
        model = diffurec(attention_mask="key_padding", position_embedding=positions, delta=0.0).eval()
        sa = model.full_sort_predict(a, torch.Generator().manual_seed(0))
        sb = model.full_sort_predict(b, torch.Generator().manual_seed(0))
        assert torch.allclose(sa, sb, atol=1e-5) != differ
