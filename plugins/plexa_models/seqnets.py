"""The torch networks behind the rnn and transformer plugins (imported when a model is built,
so naming a plugin in a pipeline does not import torch)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ToSequence(nn.Module):
    """Rows or p x p patches of an image batch, as (N, steps, features); no fixed batch size."""

    def __init__(self, rank: int, tokens: str, patch: int) -> None:
        super().__init__()
        self.rank, self.tokens, self.patch = rank, tokens, patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 2:
            if self.tokens == "rows":
                return x  # (N, T, F) already
            x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        if self.tokens == "rows":
            return x.transpose(1, 2).flatten(2)  # (N, H, C, W) -> (N, H, C*W)
        p = self.patch
        x = x.unflatten(2, (-1, p)).unflatten(4, (-1, p))  # (N, C, H/p, p, W/p, p)
        return x.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)


# --------------------------------------------------------------------------- recurrent


class Recurrent(nn.Module):
    """LSTM / GRU / Elman RNN over the steps, then a linear head on a summary of the sequence:
    the final hidden state of the last layer (both directions) or the mean of its outputs."""

    CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

    def __init__(
        self,
        to_sequence: ToSequence,
        features: int,
        outputs: int,
        *,
        cell: str,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        pool: str,
    ) -> None:
        super().__init__()
        self.to_sequence, self.pool = to_sequence, pool
        self.directions = 2 if bidirectional else 1
        self.rnn = self.CELLS[cell](
            features,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # torch applies it between layers only
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * self.directions, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(self.to_sequence(x))
        if self.pool == "mean":
            summary = out.mean(1)
        else:
            h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
            summary = h[-self.directions :].transpose(0, 1).flatten(1)  # last layer, all dirs
        return self.head(summary)


# --------------------------------------------------------------------------- transformer


class SelfAttention(nn.Module):
    """Multi-head self-attention restricted by a fixed boolean pattern (see attention.py)."""

    def __init__(self, width: int, heads: int, dropout: float, mask: np.ndarray) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        # not part of the state dict: it follows from the config, not from training
        self.register_buffer("mask", torch.from_numpy(mask.copy()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self.mask[:steps, :steps],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a GELU feed-forward, each with a residual."""

    def __init__(
        self, width: int, heads: int, feedforward: int, dropout: float, mask: np.ndarray
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, dropout, mask)
        self.norm2 = nn.LayerNorm(width)
        self.feedforward = nn.Sequential(
            nn.Linear(width, feedforward),
            nn.GELU(),
            nn.Linear(feedforward, width),
            nn.Dropout(dropout),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x)))
        return x + self.feedforward(self.norm2(x))


class Trunk(nn.Module):
    """Embedded steps plus learned positions through the blocks; (N, T, width) hidden states."""

    def __init__(
        self,
        embed: nn.Module,
        steps: int,
        width: int,
        *,
        heads: int,
        layers: int,
        feedforward: int,
        dropout: float,
        mask: np.ndarray,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.position = nn.Parameter(torch.randn(1, steps, width) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(width, heads, feedforward, dropout, mask) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:  # residual branches start small (GPT-2)
            std = 0.02 / math.sqrt(2 * layers)
            nn.init.normal_(block.attention.proj.weight, std=std)
            nn.init.normal_(block.feedforward[2].weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.drop(h + self.position[:, : h.shape[1]])
        for block in self.blocks:
            h = block(h)
        return self.norm(h)


class TransformerEncoder(nn.Module):
    """A sequence (or an image read as one) -> pooled hidden states -> logits or targets."""

    def __init__(self, to_sequence: ToSequence, trunk: Trunk, width: int, outputs: int, pool: str):
        super().__init__()
        self.to_sequence, self.trunk, self.pool = to_sequence, trunk, pool
        self.head = nn.Linear(width, outputs)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position hidden states (N, T, width): what the mask test differentiates."""
        return self.trunk(self.to_sequence(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        return self.head(h.mean(1) if self.pool == "mean" else h[:, -1])


class TransformerLM(nn.Module):
    """Decoder-only language model: token ids (N, T) -> next-token logits (N, T, vocab)."""

    def __init__(self, trunk: Trunk, width: int, vocab: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(width, vocab, bias=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
