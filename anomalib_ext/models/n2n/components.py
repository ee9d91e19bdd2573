"""Building blocks of the N2N reconstruction network (an M-net in the style of SRMNet).

The paper's architecture figures are not in its text; the layer list follows the reconstruction
of spec section 2.1 (A1-A8): SRMNet with every SK-RDB block replaced by a residual attention
module (RAM), pixel-(un)shuffle resizing, a multi-scale input pyramid and SKFF fusion of four
decoder side outputs.

Example:
    >>> import torch
    >>> from anomalib_ext.models.n2n.components import N2NReconstructionNetwork
    >>> net = N2NReconstructionNetwork(base_channels=16)
    >>> net(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 3, 64, 64])

See Also:
    - :mod:`anomalib_ext.models.n2n.torch_model`: noise blending + this network + the metric.
    - :mod:`anomalib_ext.models.n2n.loss`: the per-pixel MS-SSIM + Gaussian-L1 map (Eq. 9).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "prelu")


def _activation(name: str, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels)
    msg = f"ram_activation={name!r} is invalid: accepted values are {ACTIVATIONS}."
    raise ValueError(msg)


class ResidualAttentionModule(nn.Module):
    """Residual attention module (RAM, Sec. 3.2.1), reconstructed as an RCAB-like block (A3).

    Two pathways, each starting with a 1x1 convolution that adjusts the channels: the residual
    pathway is that 1x1 projection alone; the attention pathway is 1x1 -> 3x3 -> act -> 3x3,
    gated by channel attention (global average pooling -> 1x1 -> ReLU -> 1x1 -> sigmoid).

    Args:
        in_channels: Input channels ``c_in``.
        out_channels: Output channels ``c_out``.
        reduction: A3: channel-attention reduction, hidden width ``max(c_out // reduction, 4)``.
        activation: A8: activation in the body, ``"relu"`` or ``"prelu"``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, reduction: int = 8, activation: Literal["relu", "prelu"] = "relu"
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _activation(activation, out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        hidden = max(out_channels // reduction, 4)
        self.attn = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``proj(x) + body(x) * attention(body(x))``, shape ``(B, c_out, H, W)``."""
        y = self.body(x)
        return self.proj(x) + y * self.attn(y)


class SKFF(nn.Module):
    """Selective-kernel feature fusion (MIRNet / SRMNet), channel-wise attention over streams (A6).

    Args:
        channels: Channels ``c`` of every stream.
        height: Number of streams fused (the network depth, 4 in the paper).
        reduction: A6: squeeze width ``max(c / reduction, 4)``.
    """

    def __init__(self, channels: int, height: int = 4, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(int(channels / reduction), 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.squeeze = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.PReLU())
        self.excite = nn.ModuleList([nn.Conv2d(hidden, channels, 1, bias=False) for _ in range(height)])

    def stream_weights(self, feats: list[Tensor]) -> Tensor:
        """Softmax weights ``(B, height, c, 1, 1)``; they sum to 1 over the stream axis."""
        z = self.squeeze(self.pool(torch.stack(feats, dim=1).sum(dim=1)))
        return torch.softmax(torch.stack([fc(z) for fc in self.excite], dim=1), dim=1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Fuse ``height`` tensors of shape ``(B, c, H, W)`` into one ``(B, c, H, W)``."""
        return (torch.stack(feats, dim=1) * self.stream_weights(feats)).sum(dim=1)


class PSDown(nn.Module):
    """Halve the resolution: PixelUnshuffle(2) then Conv1x1(4 c_in -> c_out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ps = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(4 * in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_in, H, W)`` -> ``(B, c_out, H/2, W/2)``."""
        return self.conv(self.ps(x))


class PSUp(nn.Module):
    """Double the resolution: PixelShuffle(2) then Conv1x1(c_in / 4 -> c_out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ps = nn.PixelShuffle(2)
        self.conv = nn.Conv2d(in_channels // 4, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_in, H, W)`` -> ``(B, c_out, 2H, 2W)``."""
        return self.conv(self.ps(x))


class N2NReconstructionNetwork(nn.Module):
    """The M-net reconstruction network ``R`` of N2N (spec 2.1.1, 2.1.5).

    Args:
        base_channels: A2: width ``C`` (channel plan C, 2C, 4C, 8C); must be even.
        depth: A1: number of levels ``D`` (= SKFF streams); input sides must be divisible by
            ``2 ** (depth - 1)``.
        use_residual_attention: A3: RAM blocks (True) or the Table 5 ablation, a 1x1 conv.
        ram_reduction: A3: channel-attention reduction inside RAM.
        ram_activation: A8: ``"relu"`` or ``"prelu"`` inside RAM.
        skff_reduction: A6: SKFF squeeze reduction.
        share_input_stem: A4: one 3x3 stem for all pyramid levels (True) or one per level.
        skip_conv: A5: skip connections through a 3x3 conv (True) or identity.
        side_upsample_first: A6: side outputs upsample before their 3x3 conv (False: conv first).
        global_residual: A7: add the network input to the head output.
        input_unshuffle: Speed option (not in the paper): 1 (the paper) runs the M-net at the input
            resolution; ``f > 1`` folds each ``f x f`` pixel block into channels first
            (PixelUnshuffle, ``3 f^2`` channels at ``H/f``, as FFDNet does for denoising), runs the
            M-net there and unfolds the head's ``3 f^2`` channels back (PixelShuffle). The
            reconstruction and everything after it stay at full resolution; the network's cost
            drops about ``f^2``-fold. Input sides must be divisible by ``f * 2 ** (depth - 1)``.
    """

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 4,
        use_residual_attention: bool = True,
        ram_reduction: int = 8,
        ram_activation: Literal["relu", "prelu"] = "relu",
        skff_reduction: int = 8,
        share_input_stem: bool = True,
        skip_conv: bool = True,
        side_upsample_first: bool = False,
        global_residual: bool = True,
        input_unshuffle: int = 1,
    ) -> None:
        super().__init__()
        if input_unshuffle < 1:
            msg = f"input_unshuffle={input_unshuffle} is invalid: expected an integer >= 1 (1 = the paper)."
            raise ValueError(msg)
        if base_channels < 2 or base_channels % 2:
            msg = f"base_channels={base_channels} is invalid: expected an even number >= 2 (PixelShuffle gives C/2)."
            raise ValueError(msg)
        if depth < 2:
            msg = f"depth={depth} is invalid: expected at least 2 levels."
            raise ValueError(msg)
        self.depth = depth
        self.side_upsample_first = side_upsample_first
        self.global_residual = global_residual
        self.input_unshuffle = input_unshuffle
        image_channels = 3 * input_unshuffle**2
        self.unshuffle = nn.PixelUnshuffle(input_unshuffle) if input_unshuffle > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(input_unshuffle) if input_unshuffle > 1 else nn.Identity()
        c = base_channels

        def block(c_in: int, c_out: int) -> nn.Module:
            if use_residual_attention:
                return ResidualAttentionModule(c_in, c_out, ram_reduction, ram_activation)
            return nn.Conv2d(c_in, c_out, 1)

        n_stems = 1 if share_input_stem else depth
        self.stems = nn.ModuleList([nn.Conv2d(image_channels, c, 3, padding=1) for _ in range(n_stems)])
        enc_in = [c] + [2 ** (i - 1) * c + c for i in range(1, depth)]
        self.enc = nn.ModuleList([block(enc_in[i], 2**i * c) for i in range(depth)])
        self.down = nn.ModuleList([PSDown(2**i * c, 2**i * c) for i in range(depth - 1)])
        self.bottom_conv = nn.Conv2d(2 ** (depth - 1) * c, c, 3, padding=1)
        levels = list(reversed(range(depth - 1)))  # D-2 ... 0
        self.up = nn.ModuleList([PSUp(2 ** (i + 1) * c, 2**i * c) for i in levels])
        self.skip = nn.ModuleList(
            [nn.Conv2d(2**i * c, 2**i * c, 3, padding=1) if skip_conv else nn.Identity() for i in levels]
        )
        self.dec = nn.ModuleList([block(2 ** (i + 1) * c, 2**i * c) for i in levels])
        self.side = nn.ModuleList([nn.Conv2d(2**i * c, c, 3, padding=1) for i in levels])
        self.skff = SKFF(c, height=depth, reduction=skff_reduction)
        self.head = nn.Conv2d(c, image_channels, 3, padding=1)

    def _stem(self, level: int) -> nn.Module:
        return self.stems[0] if len(self.stems) == 1 else self.stems[level]

    def _side(self, conv: nn.Module, feat: Tensor, size: tuple[int, int], resize: bool) -> Tensor:
        if not resize:
            return conv(feat)
        if self.side_upsample_first:
            return conv(F.interpolate(feat, size=size, mode="bilinear", align_corners=False))
        return F.interpolate(conv(feat), size=size, mode="bilinear", align_corners=False)

    def forward(self, x_noisy: Tensor) -> Tensor:
        """Reconstruct ``(B, 3, H, W)`` from the noisy ``(B, 3, H, W)`` input (normalised space)."""
        folded = self.unshuffle(x_noisy)
        size = (folded.shape[-2], folded.shape[-1])
        pyramid = [folded]
        for _ in range(self.depth - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))  # == bilinear x0.5, align_corners=False (A4)
        h = self._stem(0)(pyramid[0])
        encs: list[Tensor] = []
        for i in range(self.depth):
            if i > 0:
                h = torch.cat([h, self._stem(i)(pyramid[i])], dim=1)
            h = self.enc[i](h)
            if i < self.depth - 1:
                encs.append(h)
                h = self.down[i](h)
        sides = [self._side(self.bottom_conv, h, size, resize=True)]
        for k, level in enumerate(reversed(range(self.depth - 1))):
            h = self.dec[k](torch.cat([self.up[k](h), self.skip[k](encs[level])], dim=1))
            sides.append(self._side(self.side[k], h, size, resize=level > 0))
        out = self.shuffle(self.head(self.skff(sides)))
        return out + x_noisy if self.global_residual else out
