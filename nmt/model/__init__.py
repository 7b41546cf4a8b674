"""The network: embeddings, encoder, attention, decoder, and the model that joins them."""

from nmt.model.seq2seq import EncoderState, Seq2Seq

__all__ = ["EncoderState", "Seq2Seq"]
