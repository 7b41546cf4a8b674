"""int8 translation: the linear layers become int8, the outputs stay close to float32."""

import pytest
import torch
from torch.ao.nn.quantized.dynamic import GRU as DynamicQuantizedGRU
from torch.ao.nn.quantized.dynamic import LSTM as DynamicQuantizedLSTM
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from nmt.errors import NmtError
from nmt.model.cells import INT8_PRODUCTS
from nmt.model.quantize import quantize
from conftest import tiny_model
from test_model import padded_batch


@pytest.mark.parametrize(
    "changes",
    [
        {},  # Bahdanau, LSTM, input feeding
        dict(attention="luong-general", decoder_cell="gru", encoder_cell="gru", decoder_layers=2),
        dict(attention="luong-dot", hidden_size=24, input_feeding=False),  # decoder runs nn.LSTM
    ],
)
def test_int8_model_keeps_its_outputs_close_and_leaves_the_original_alone(changes):
    settings = dict(embedding_size=32, hidden_size=32, decoder_hidden_size=48, tie_output=False)
    model = tiny_model(vocab=11, seed=4, **{**settings, **changes})
    int8 = quantize(model, "int8")
    assert isinstance(int8.output, DynamicQuantizedLinear)
    assert isinstance(int8.encoder.rnn, (DynamicQuantizedLSTM, DynamicQuantizedGRU))
    if int8.decoder.stepwise:  # the decoder's own step products are int8
        assert set(getattr(int8.decoder.rnn, INT8_PRODUCTS)) >= {"embedded", "hidden0"}
    else:
        assert isinstance(int8.decoder.rnn, DynamicQuantizedLSTM)
    assert isinstance(model.output, torch.nn.Linear)  # a copy was quantized
    assert not hasattr(model.decoder.rnn, INT8_PRODUCTS)
    batch = padded_batch()
    with torch.no_grad():
        reference = model.logits(model(batch.source, batch.source_lengths, batch.target_in)[0])
        approximate = int8.logits(int8(batch.source, batch.source_lengths, batch.target_in)[0])
    error = (approximate - reference).abs().max() / reference.abs().max()
    assert error < 0.05
    agree = (approximate.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agree > 0.9


def test_unknown_kinds_are_refused():
    with pytest.raises(NmtError, match="--quantize int4"):
        quantize(tiny_model(), "int4")


def test_int8_weights_are_for_a_cpu():
    """PyTorch's dynamic int8 kernels run on CPUs only: a model elsewhere (the meta device
    stands in for a GPU) is refused, naming the flag that fixes it."""
    with pytest.raises(NmtError, match="add --device cpu"):
        quantize(tiny_model().to("meta"), "int8")
