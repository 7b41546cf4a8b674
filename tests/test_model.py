import pytest
import torch

from nmt.data.batching import Batch
from nmt.data.subwords import BOS, EOS, PAD
from nmt.training import batch_loss
from conftest import tiny_model

# Every attention score × flow × input feeding, then the other architecture choices.
VARIANTS = [
    dict(attention_score=score, attention_flow=flow, input_feeding=feeding)
    for score in ("additive", "dot", "general")
    for flow in ("luong", "bahdanau")
    for feeding in (True, False)
] + [
    dict(encoder_cell="gru", decoder_cell="rnn", decoder_init="zeros"),
    dict(
        encoder_cell="rnn",
        decoder_cell="gru",
        encoder_layers=2,
        decoder_layers=2,
        bidirectional=False,
        hidden_size=12,
        decoder_init="last",
    ),
    dict(decoder_layers=3, dropout=0.3, attention="bahdanau"),
    dict(tie_embeddings=True, tie_output=True, embedding_size=12),
    dict(init="uniform", orthogonal_recurrent=True, forget_bias=1.0),
    dict(init="xavier", attention="luong-general", input_feeding=False, decoder_layers=2),
    dict(locked_dropout=True, dropout=0.3, source_word_dropout=0.2, target_word_dropout=0.2),
    dict(locked_dropout=True, dropout=0.3, input_feeding=False, attention="luong-general"),
]
NAMES = [",".join(f"{k}={v}" for k, v in variant.items()) for variant in VARIANTS]


def padded_batch(extra_source_pad=0, extra_target_pad=0):
    source = torch.tensor([[5, 6, 7, 8, EOS], [9, 10, EOS, PAD, PAD]])
    target_in = torch.tensor([[BOS, 5, 6], [BOS, 7, PAD]])
    target_out = torch.tensor([[5, 6, EOS], [7, EOS, PAD]])
    pad = torch.nn.functional.pad
    return Batch(
        pad(source, (0, extra_source_pad), value=PAD),
        torch.tensor([5, 3]),
        pad(target_in, (0, extra_target_pad), value=PAD),
        pad(target_out, (0, extra_target_pad), value=PAD),
    )


def variant(settings):
    return tiny_model(**settings)


@pytest.mark.parametrize("settings", VARIANTS, ids=NAMES)
def test_padding_changes_no_loss(settings):
    model = variant(settings)
    loss = batch_loss(model, padded_batch(), 0.1)
    assert torch.allclose(loss, batch_loss(model, padded_batch(4, 3), 0.1), atol=1e-6)


@pytest.mark.parametrize("settings", VARIANTS, ids=NAMES)
def test_padding_gets_no_attention_and_shapes(settings):
    model = variant(settings)
    batch = padded_batch(2)
    attentional, weights = model(batch.source, batch.source_lengths, batch.target_in)
    assert attentional.shape == (2, 3, 12)
    assert weights.shape == (2, 3, 7)
    assert torch.all(weights[1, :, 3:] == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3))


@pytest.mark.parametrize("settings", VARIANTS, ids=NAMES)
def test_one_step_lowers_the_loss(settings):
    model = variant(settings).train()
    batch = padded_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = batch_loss(model, batch, 0.0)
    before.backward()
    optimizer.step()
    assert batch_loss(model, batch, 0.0) < before


@pytest.mark.parametrize(
    "settings", [dict(attention="bahdanau", decoder_layers=2), *VARIANTS], ids=["2-layer", *NAMES]
)
def test_step_by_step_decoding_equals_teacher_forcing(settings):
    """decode_step (search) and forward (training) must compute the same model, whichever
    path training takes (without input feeding in the Luong flow: the fused nn.LSTM over the
    whole sequence and one batched attention)."""
    model = variant(settings)
    batch = padded_batch()
    attentional, _ = model(batch.source, batch.source_lengths, batch.target_in)
    expected = torch.log_softmax(model.logits(attentional), -1)
    encoded = model.encode(batch.source, batch.source_lengths)
    state = model.initial_state(encoded)
    for t in range(batch.target_in.size(1)):
        log_probs, state, _ = model.decode_step(encoded, state, batch.target_in[:, t])
        assert torch.allclose(log_probs, expected[:, t], atol=1e-5)


def test_tied_output_shares_the_embedding():
    model = tiny_model(tie_output=True, tie_embeddings=True, embedding_size=12)
    assert model.output.weight is model.target_embedding.weight
    assert model.source_embedding is model.target_embedding


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepwise_cells_equal_the_fused_modules(cell):
    """The input-feeding decoder steps with cells.step on nn.LSTM/GRU/RNN weights: same numbers."""
    from nmt.model import cells
    from nmt.model.encoder import RNN_CLASSES

    torch.manual_seed(0)
    rnn = RNN_CLASSES[cell](7, 5, num_layers=2, batch_first=True)
    inputs = torch.randn(3, 4, 7)
    hidden = torch.randn(2, 3, 5)
    state = (hidden, torch.randn(2, 3, 5)) if cell == "lstm" else hidden
    expected, expected_state = rnn(inputs, state)
    outputs = []
    for gates_x in cells.input_projection(rnn, inputs).unbind(1):
        output, state = cells.step(rnn, cell, gates_x, None, state, 0.0, False)
        outputs.append(output)
    assert torch.allclose(torch.stack(outputs, 1), expected, atol=1e-6)
    for got, want in zip(
        state if cell == "lstm" else [state], expected_state if cell == "lstm" else [expected_state]
    ):
        assert torch.allclose(got, want, atol=1e-6)


def test_uniform_initialisation_stays_within_init_range():
    model = tiny_model(init="uniform", init_range=0.03, forget_bias=0.0)
    for name, parameter in model.named_parameters():
        assert parameter.abs().max() <= 0.03, name
    assert model.decoder.rnn.weight_hh_l0.abs().max() > 0.025  # spread over the range


def test_forget_bias_and_orthogonal_recurrent_weights():
    model = tiny_model(orthogonal_recurrent=True, forget_bias=1.0, init="xavier")
    bias = model.decoder.rnn.bias_ih_l0
    size = bias.size(0) // 4
    assert torch.all(bias[size : 2 * size] == 1.0) and torch.all(bias[:size] == 0.0)
    block = model.decoder.rnn.weight_hh_l0[:12]
    assert torch.allclose(block @ block.t(), torch.eye(12), atol=1e-5)


@pytest.mark.parametrize("score", ["additive", "dot", "general"])
def test_each_attention_score_gives_its_textbook_weights_and_gradients(score):
    """Weights and gradients equal softmax(score) by the papers' formulas, for K hypotheses per
    sentence sharing the sentence's keys; additive is computed as 2vᵀσ(2a), not vᵀtanh(a)."""
    from nmt.model.attention import build_attention

    torch.manual_seed(0)
    attention = build_attention(score, 8, 8)
    memory = torch.randn(3, 5, 8, requires_grad=True)  # B = 3 sentences, S = 5
    query = torch.randn(6, 2, 8, requires_grad=True)  # K = 2 rows per sentence, T = 2 steps
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    rows = torch.arange(3).repeat_interleave(2)  # each row's sentence

    def textbook():
        m = memory[rows]  # (N, S, M)
        if score == "additive":
            a = (
                attention.query_projection(query)[:, :, None]
                + attention.memory_projection(m)[:, None]
            )
            e = torch.tanh(a) @ attention.energy.weight[0]  # vᵀ tanh(W q + U m): (N, T, S)
        elif score == "dot":
            e = query @ m.transpose(1, 2)
        else:
            e = query @ attention.memory_projection(m).transpose(1, 2)
        weights = e.masked_fill(~mask[rows][:, None], float("-inf")).softmax(-1)
        return weights @ m, weights

    def gradients(outputs):
        inputs = [query, memory, *attention.parameters()]
        loss = outputs[0].square().sum() + outputs[1][..., 0].sum()
        return torch.autograd.grad(loss, inputs)

    ours = attention(query, attention.keys(memory), memory, mask)
    theirs = textbook()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(gradients(ours), gradients(textbook())):
        assert torch.allclose(a, b, atol=1e-5)


def test_additive_attention_in_bfloat16_keeps_tanh_accuracy():
    """float32 computes 2vᵀσ(2a), whose scores carry the offset Σv; in bfloat16 that offset and
    σ's values near 0.5–1 would round ~20× worse than vᵀtanh(a) (0.034 against 0.0015 here), so
    bfloat16 keeps tanh. A large positive Σv and small projections make the difference show."""
    from nmt.model.attention import AdditiveAttention

    torch.manual_seed(0)
    attention = AdditiveAttention(8, 8, 64)
    with torch.no_grad():
        attention.energy.weight.copy_(torch.rand(1, 64) * 2)  # Σv ≈ 50
        attention.query_projection.weight.mul_(0.1)
        attention.memory_projection.weight.mul_(0.1)
    query, memory = torch.randn(3, 2, 8), torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    exact = attention.double()
    scores = exact.energy(
        torch.tanh(
            exact.query_projection(query.double())[:, :, None]
            + exact.memory_projection(memory.double())[:, None]
        )
    ).squeeze(-1)
    half = attention.to(torch.bfloat16)
    query, memory = query.bfloat16(), memory.bfloat16()
    weights = half(query, half.keys(memory), memory, mask)[1]
    assert (weights.double() - scores.softmax(-1)).abs().max() < 0.005


def test_the_attention_docstring_table_is_the_recipes_presets():
    """nmt/model/attention.py shows the presets beside the classes; the recipe holds them (it may
    not import the model). The two must say the same, and each score must build its class."""
    import re

    from nmt.model import attention
    from nmt.recipe import ATTENTION_PRESETS

    rows = re.findall(r"^\s+([a-z-]+)\s+(\w+)\s+(\w+Attention)\s+(\w+)$", attention.__doc__, re.M)
    assert {name: (score, flow) for name, score, _, flow in rows} == ATTENTION_PRESETS
    for name, score, cls, _ in rows:
        assert type(attention.build_attention(score, 8, 8)).__name__ == cls, name


def test_word_dropout_replaces_real_subwords_by_unk_in_training_only():
    from nmt.data.subwords import UNK
    from nmt.model.seq2seq import word_dropout

    torch.manual_seed(0)
    ids = torch.randint(4, 50, (200, 60))
    ids[:, 0], ids[:, -1], ids[:10, 30:] = BOS, EOS, PAD
    dropped = word_dropout(ids, 0.25, training=True)
    changed = dropped != ids
    assert (dropped[changed] == UNK).all()
    assert not changed[ids <= EOS].any()  # PAD, BOS and EOS stay
    assert changed[ids > EOS].float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(word_dropout(ids, 0.25, training=False), ids)


@pytest.mark.parametrize("locked", [True, False])
def test_locked_dropout_draws_one_mask_per_sentence(locked):
    """With locked dropout a unit dropped at one step is dropped at every step, in the
    embeddings, the encoder's states and the decoder's attentional vectors; without it, the
    masks differ from step to step."""
    torch.manual_seed(1)
    model = tiny_model(vocab=20, dropout=0.5, locked_dropout=locked)
    source = torch.full((3, 12), 7)  # the same token at every position...
    source[:, -1] = EOS
    target_in = torch.full((3, 10), 9)
    target_in[:, 0] = BOS
    seen = []
    hooks = [
        model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0])),
        model.decoder.register_forward_hook(lambda m, args, out: seen.append(out[0])),
    ]
    model.train()
    encoded = model.encode(source, torch.tensor([12] * 3))
    model(source, torch.tensor([12] * 3), target_in)
    for hook in hooks:
        hook.remove()
    embedded, _, attentional = seen  # encode's embeddings, forward's, the decoder's h̃
    same_token = embedded[:, :-1]  # ...so the same embedding, but for the mask
    masks = {"embeddings": same_token == 0, "attentional vectors": attentional == 0}
    if locked:  # the encoder's states are dropped only with locked dropout
        masks["encoder states"] = encoded.memory[:, :-1] == 0
    else:
        assert not (encoded.memory != 0).logical_not().all(-1).any()
    for name, zero in masks.items():
        constant = bool((zero == zero[:, :1]).all())
        assert zero.any(), name
        assert constant == locked, name


def test_word_dropout_reaches_the_embeddings_in_training_and_not_in_eval():
    from nmt.data.subwords import UNK

    model = tiny_model(vocab=40, source_word_dropout=0.5, target_word_dropout=0.5)
    source = torch.randint(4, 40, (64, 20))
    source[:, -1] = EOS
    target_in = torch.randint(4, 40, (64, 15))
    target_in[:, 0] = BOS
    kept = target_in.clone()
    seen = []
    hooks = [
        embedding.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        for embedding in (model.source_embedding, model.target_embedding)
    ]
    torch.manual_seed(0)
    model.train()
    model(source, torch.full((64,), 20), target_in)
    model.eval()
    model(source, torch.full((64,), 20), target_in)
    for hook in hooks:
        hook.remove()
    trained_source, trained_target, eval_source, eval_target = seen
    for ids in (trained_source, trained_target):
        share = (ids == UNK).float().mean().item()
        assert 0.4 < share < 0.6
    assert (trained_source[:, -1] == EOS).all() and (trained_target[:, 0] == BOS).all()
    assert torch.equal(eval_source, source) and torch.equal(eval_target, target_in)
    assert torch.equal(target_in, kept)  # the batch's own tensors are not changed in place


def test_locked_dropout_is_off_in_eval():
    torch.manual_seed(2)
    locked = tiny_model(vocab=20, dropout=0.5, locked_dropout=True)
    plain = tiny_model(vocab=20, dropout=0.5)
    plain.load_state_dict(locked.state_dict())
    source = torch.tensor([[5, 6, 7, EOS]])
    target_in = torch.tensor([[BOS, 8, 9]])
    outputs = [m.eval()(source, torch.tensor([4]), target_in)[0] for m in (locked, plain)]
    assert torch.equal(*outputs)


def test_autocast_converts_the_memory_once_and_keeps_the_loss():
    """Under bf16 autocast `encode` hands the decoder a bfloat16 memory (converted once, not by
    every step's product), and the loss stays within bf16 rounding (2%) of float32."""
    model = variant({})
    batch = padded_batch()
    assert model.encode(batch.source, batch.source_lengths).memory.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = model.encode(batch.source, batch.source_lengths)
        low = batch_loss(model, batch, 0.1)
    assert encoded.memory.dtype == torch.bfloat16
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(batch_loss(model, batch, 0.1).item(), rel=0.02)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_locked_dropout_keeps_bf16_autocasts_attentional_vectors_in_bfloat16(input_feeding):
    """The output layer's products run in the attentional vectors' dtype: a float32 mask must
    not turn them float32 under bf16 autocast (it made locked-dropout training 30% slower)."""
    source = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
    target_in = torch.tensor([[BOS, 5, 6], [BOS, 7, PAD]])
    for locked in (False, True):
        model = tiny_model(
            vocab=20, dropout=0.5, locked_dropout=locked, input_feeding=input_feeding
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attentional, _ = model.train()(source, torch.tensor([4, 3]), target_in)
        assert attentional.dtype == torch.bfloat16, locked
