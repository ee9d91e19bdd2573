"""Feature restoration module (FR) of MLDFR: a stack of ViT-style blocks with LayerScale.

The restorer takes the fused multilevel features of a (damaged or test) image as a token map, adds
a learnable position encoding of the same size, and runs ``num_blocks`` pre-norm transformer blocks
(eqs. 2-3 of the paper) with a learnable diagonal ``gamma`` (LayerScale) on the feed-forward branch.
It has no class token, no final norm and no head: its output is compared directly with the
features of the intact image (a linear map to the target's width is added only where the target side
is wider, as with the offline deep pair ``blocks.5.0 -> blocks.6.0``).

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.restorer import FeatureRestorer
    >>> restorer = FeatureRestorer(dim=64, num_tokens=16, num_blocks=2, num_heads=8)
    >>> restorer(torch.rand(2, 64, 4, 4)).shape
    torch.Size([2, 64, 4, 4])

See Also:
    - :mod:`anomalib_ext.models.mldfr.torch_model`: where the restorer sits in MLDFR.
    - Spec: section 2.1.5 and assumptions A6, A8-A14 of ``methods/mldfr.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import Attention, Mlp, trunc_normal_
from timm.models.cait import TalkingHeadAttn
from torch import nn


class RestorationBlock(nn.Module):
    """One pre-norm restoration block: ``x + Attn(LN(x))`` then ``x + gamma * MLP(LN(x))`` (eqs. 2-3).

    timm's ``cait.LayerScaleBlock`` is not reused: it scales both branches with init 1e-4, while
    MLDFR's eq. 3 scales only the feed-forward branch (init 1e-5 in the public code).

    Args:
        dim: Token width ``C``.
        num_heads: A8: attention heads (must divide ``dim``).
        mlp_ratio: A9: hidden width of the MLP as a multiple of ``dim``.
        qkv_bias: A9: bias in the query/key/value projection.
        norm_eps: A9: LayerNorm epsilon.
        dropout: A9: dropout after attention and in the MLP.
        attention_type: A10: ``"standard"`` (ViT's, the paper's text; timm's fused attention),
            ``"talking_heads"`` (CaiT's, the public code) or ``"none"`` (Table IX "MLP" ablation: no
            attention branch).
        layer_scale: A11: learnable diagonal ``gamma`` on the MLP branch (eq. 3).
        layer_scale_init: A12: initial value of every ``gamma``.
        layer_scale_on_attention: A11: also scale the attention branch (CaiT's reading).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        attention_type: Literal["standard", "talking_heads", "none"] = "standard",
        layer_scale: bool = True,
        layer_scale_init: float = 1e-5,
        layer_scale_on_attention: bool = False,
    ) -> None:
        super().__init__()
        if attention_type != "none" and dim % num_heads:
            msg = f"num_heads={num_heads} must divide the feature width {dim}."
            raise ValueError(msg)
        self.norm1: nn.Module | None = None
        self.attn: nn.Module | None = None
        if attention_type != "none":
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
            if attention_type == "talking_heads":
                self.attn = TalkingHeadAttn(dim, num_heads, qkv_bias=qkv_bias, attn_drop=dropout, proj_drop=dropout)
            else:
                self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=dropout, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.gamma_ffn = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale else None
        use_attn_scale = layer_scale and layer_scale_on_attention and self.attn is not None
        self.gamma_attn = nn.Parameter(torch.full((dim,), layer_scale_init)) if use_attn_scale else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Restore ``(B, L, C)`` tokens; returns the same shape."""
        if self.attn is not None and self.norm1 is not None:
            attended = self.attn(self.norm1(tokens))
            tokens = tokens + (self.gamma_attn * attended if self.gamma_attn is not None else attended)  # eq. 2
        hidden = self.mlp(self.norm2(tokens))
        return tokens + (self.gamma_ffn * hidden if self.gamma_ffn is not None else hidden)  # eq. 3


def _init_weights(module: nn.Module) -> None:
    """CaiT initialisation (timm): Linear trunc-normal(0.02) and zero bias, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class FeatureRestorer(nn.Module):
    """FR: learnable position encoding + ``num_blocks`` :class:`RestorationBlock` on a feature map.

    Args:
        dim: Fused feature width ``C`` (736 for ResNet-18 + CaiT-XS24).
        num_tokens: Token count ``L = (H/16)^2`` (576 at 384 px): the position encoding's length.
        num_blocks: Number of restoration blocks (paper: 8).
        pos_embed_init_std: A13: std of the trunc-normal position-encoding init.
        final_norm: A14: LayerNorm after the last block (default off).
        restorer_dim: A6: ``None`` runs the blocks at width ``dim``; an integer adds a Linear
            ``dim -> restorer_dim`` before and ``restorer_dim -> dim`` after the blocks (not in the
            paper; only to make CPU runs cheaper).
        out_dim: Width of the restored features (the target side's); ``None`` = ``dim``. A different
            width adds a Linear to it after the blocks.
        **block_kwargs: Passed to every :class:`RestorationBlock`.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        num_blocks: int = 8,
        pos_embed_init_std: float = 0.02,
        final_norm: bool = False,
        restorer_dim: int | None = None,
        out_dim: int | None = None,
        **block_kwargs: float | int | bool | str,
    ) -> None:
        super().__init__()
        width = restorer_dim or dim
        self.input_projection = nn.Linear(dim, width) if restorer_dim else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.blocks = nn.Sequential(*[RestorationBlock(width, **block_kwargs) for _ in range(num_blocks)])
        norm_eps = float(block_kwargs.get("norm_eps", 1e-6))
        self.norm = nn.LayerNorm(width, eps=norm_eps) if final_norm else nn.Identity()
        out_dim = out_dim or dim
        self.output_projection = nn.Linear(width, out_dim) if restorer_dim or out_dim != width else nn.Identity()
        self.apply(_init_weights)
        trunc_normal_(self.pos_embed, std=pos_embed_init_std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Restore a ``(B, C, h, w)`` feature map (``h * w == num_tokens``); returns the same shape."""
        batch, _, height, width = features.shape
        tokens = self.input_projection(features.flatten(2).transpose(1, 2)) + self.pos_embed
        tokens = self.output_projection(self.norm(self.blocks(tokens)))
        return tokens.transpose(1, 2).reshape(batch, tokens.shape[-1], height, width)
