"""Attention inputs beyond dense masks, as pure functions of the kept indices.

``flex``: a FlexAttention ``BlockMask`` composed with the kept indices. ``varlen``: the varlen
boundaries (``cu_seq_lens``) of packed documents after dropping. ``inputs``: what the dropping
layer calls to gather them, with per-key biases (ALiBi) and the check that no per-token input
reaches a short layer at full length.
"""
