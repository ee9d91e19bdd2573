"""Building blocks of RB-AE: encoder, RBFRM/FFM/RBAM repair, decoder, FDM heads, perceptual net.

Paper: "Reference-Based Autoencoder for Surface Defect Detection" (W. Luo, H. Yao, W. Yu, X. Wang).
The paper fixes only the *structure* (5-level encoder, RBAM at the three deepest levels with
patch sizes 2 and 4, an SKNet-like fusion with a 64-channel 5x5 squeeze, three FDMs); the
layer-level design follows the spec's ASSUMPTIONS A1-A9 (``methods/rbae.md`` section 2.1).

Everything here that sits on the inference path (encoder, RBAM, decoder, FDM) uses only
reshape/permute/matmul/conv/interpolate, so it traces with the dynamo ONNX exporter.

Example:
    >>> import torch
    >>> from anomalib_ext.models.rbae.components import Encoder, RBAM
    >>> feats = Encoder(channels=(8, 8, 16, 16, 16))(torch.rand(1, 3, 64, 64))
    >>> [tuple(f.shape[1:]) for f in feats]
    [(8, 64, 64), (8, 32, 32), (16, 16, 16), (16, 8, 8), (16, 4, 4)]
    >>> RBAM(16)(feats[2], feats[2][:1]).shape
    torch.Size([1, 16, 16, 16])

See Also:
    - :mod:`anomalib_ext.models.rbae.torch_model`: the assembled network.
    - :mod:`anomalib_ext.models.rbae.loss`: the losses of both training phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomalib_ext.backbones import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def double_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """A1: two ``Conv3x3-BN-ReLU`` blocks; the first conv carries the stride."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """Five-level convolutional encoder ``E`` trained from scratch (A1-A3).

    Args:
        channels: A2: output channels of the five levels.
        strides: A3: stride of each level (level 1 at full resolution, so ``AM_1`` needs no
            upsampling in Eq. 11).
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(strides) != 5:
            msg = f"The RB-AE encoder has 5 levels: got channels={channels}, strides={strides}."
            raise ValueError(msg)
        in_channels = (3, *tuple(channels[:-1]))
        self.layers = nn.ModuleList(
            double_conv(cin, cout, s) for cin, cout, s in zip(in_channels, channels, strides, strict=True)
        )

    def forward(self, images: Tensor, num_levels: int = 5) -> list[Tensor]:
        """Return ``[Phi_1, ..., Phi_num_levels]`` of ``images`` (B, 3, H, W) in [0, 1]."""
        features = []
        x = images
        for layer in self.layers[:num_levels]:
            x = layer(x)
            features.append(x)
        return features


def patchify(x: Tensor, k: int) -> Tensor:
    """Cut ``(B, C, H, W)`` into non-overlapping ``k x k`` patches: ``(B, N, C*k*k)``, N = HW/k^2."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // k) * (w // k), c * k * k)


def unpatchify(patches: Tensor, channels: int, height: int, width: int, k: int) -> Tensor:
    """Exact inverse of :func:`patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, height // k, width // k, channels, k, k).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, height, width)


class RBFRM(nn.Module):
    """Reference-based feature repair module, Eqs. 3-5.

    Every ``k x k`` patch of the input features is replaced by the softmax(cosine similarity)-
    weighted sum of the raw patches of the reference features.

    The softmax temperature decides whether the repair can *select*. The features are ReLU outputs,
    so cosine similarities lie in [0, 1]; with the paper's Eq. 4 taken literally (scale 1) no
    reference patch gets more than ``e / (e + N - 1)`` of the weight (0.27 % for the N = 1024
    patches of level 3 at 256 px) and every repair is close to the mean reference patch, whatever
    the input. Contextual attention, which the paper cites for RBAM, multiplies the similarities by
    10; the scale can also be learned (``learn_scale``), starting from ``softmax_scale``.

    Args:
        patch_size: K (2 or 4 in the paper).
        softmax_scale: A6: temperature multiplying the cosine similarities (paper Eq. 4: 1;
            contextual attention: 10). With ``learn_scale`` the initial value.
        eps: A7: epsilon of the L2 normalisation (zero patches give zero similarity).
        learn_scale: A6: learn the temperature (a positive parameter, stored as its logarithm).
    """

    def __init__(
        self, patch_size: int, softmax_scale: float = 1.0, eps: float = 1e-12, learn_scale: bool = False
    ) -> None:
        super().__init__()
        if softmax_scale <= 0:
            msg = f"rbfrm_softmax_scale must be > 0, got {softmax_scale}."
            raise ValueError(msg)
        self.patch_size = patch_size
        self.eps = eps
        log_scale = torch.tensor(float(softmax_scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    @property
    def softmax_scale(self) -> Tensor:
        """The temperature multiplying the cosine similarities (a 0-d tensor)."""
        return self.log_scale.exp()

    def attention(self, features: Tensor, reference: Tensor) -> Tensor:
        """Eq. 4: weights ``(B, N, M)`` of the M reference patches for each of the N input patches."""
        k = self.patch_size
        queries = F.normalize(patchify(features, k), dim=-1, eps=self.eps)  # (B, N, D)
        keys = F.normalize(patchify(reference, k), dim=-1, eps=self.eps)  # (1, M, D)
        similarity = queries @ keys.transpose(1, 2)  # Eq. 3
        return torch.softmax(self.softmax_scale * similarity, dim=-1)  # Eq. 4

    def forward(self, features: Tensor, reference: Tensor) -> Tensor:
        """Repair ``features`` (B, C, H, W) with ``reference`` (1, C, H', W'); returns (B, C, H, W)."""
        _, c, h, w = features.shape
        patches = patchify(reference, self.patch_size)
        return unpatchify(self.attention(features, reference) @ patches, c, h, w, self.patch_size)  # Eq. 5


class FFM(nn.Module):
    """SKNet-like feature fusion of the un-repaired and repaired features, Eqs. 6-8.

    Args:
        channels: C of the fused features.
        mid_channels: channels of the squeeze (paper: 64).
        kernel_size: m of all convs (paper: 5).
        num_branches: number of fused inputs (the raw features plus one per patch size).
        squeeze_norm: A8: BatchNorm + ReLU after the squeeze conv.
    """

    def __init__(
        self,
        channels: int,
        mid_channels: int = 64,
        kernel_size: int = 5,
        num_branches: int = 3,
        squeeze_norm: bool = True,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(channels, mid_channels, kernel_size, 1, pad, bias=not squeeze_norm)]
        if squeeze_norm:
            layers += [nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True)]
        self.squeeze = nn.Sequential(*layers)
        self.attention = nn.ModuleList(
            nn.Conv2d(mid_channels, channels, kernel_size, 1, pad, bias=True) for _ in range(num_branches)
        )

    def attention_maps(self, branches: Sequence[Tensor]) -> Tensor:
        """Per-element softmax over the branches (Eq. 7): ``(num_branches, B, C, H, W)``, sums to 1."""
        fused = torch.stack(list(branches), 0).sum(0)  # Eq. 6, F_U
        z = self.squeeze(fused)
        return torch.stack([conv(z) for conv in self.attention], 0).softmax(dim=0)

    def forward(self, branches: Sequence[Tensor]) -> Tensor:
        """Fuse ``[F_d, F_rep2, F_rep4]`` into ``F_out`` (Eq. 8)."""
        weights = self.attention_maps(branches)
        return (weights * torch.stack(list(branches), 0)).sum(0)


class RBAM(nn.Module):
    """Reference-based attention module: RBFRMs at every patch size + FFM (one per level 3, 4, 5).

    Args:
        channels: C of the level.
        patch_sizes: K values (paper: 2 and 4).
        softmax_scale: A6: RBFRM temperature.
        mid_channels: FFM squeeze channels (paper: 64).
        kernel_size: FFM kernel m (paper: 5).
        squeeze_norm: A8: BN + ReLU after the FFM squeeze.
        eps: A7: normalisation epsilon.
        learn_scale: A6: learn the RBFRM temperatures (one per patch size).
    """

    def __init__(
        self,
        channels: int,
        patch_sizes: Sequence[int] = (2, 4),
        softmax_scale: float = 1.0,
        mid_channels: int = 64,
        kernel_size: int = 5,
        squeeze_norm: bool = True,
        eps: float = 1e-12,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        self.repair = nn.ModuleList(RBFRM(k, softmax_scale, eps, learn_scale) for k in patch_sizes)
        self.ffm = FFM(channels, mid_channels, kernel_size, len(patch_sizes) + 1, squeeze_norm)

    def forward(self, features: Tensor, reference: Tensor) -> Tensor:
        """Return ``F_out`` with the shape of ``features``."""
        return self.ffm([features] + [repair(features, reference) for repair in self.repair])


class Decoder(nn.Module):
    """Decoder ``G``: bottleneck ``F_out^5`` plus skips at levels 3 and 4 only (A4, A5).

    Args:
        channels: the encoder channels (the decoder mirrors them).
        out_activation: A5: ``"sigmoid"`` (reconstruction in [0, 1]) or ``"none"``.
    """

    def __init__(
        self, channels: Sequence[int] = (64, 128, 256, 512, 512), out_activation: Literal["sigmoid", "none"] = "sigmoid"
    ) -> None:
        super().__init__()
        c = tuple(channels)
        self.block4 = double_conv(c[4] + c[3], c[2])
        self.block3 = double_conv(c[2] + c[2], c[1])
        self.block2 = double_conv(c[1], c[0])
        self.block1 = double_conv(c[0], c[0])
        self.head = nn.Conv2d(c[0], 3, 1)
        self.out_activation = out_activation

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, f3: Tensor, f4: Tensor, f5: Tensor) -> Tensor:
        """Reconstruct a (B, 3, H, W) image from the level-3/4/5 (repaired) features."""
        x = self.block4(torch.cat([self._up(f5), f4], 1))
        x = self.block3(torch.cat([self._up(x), f3], 1))
        x = self.block1(self._up(self.block2(self._up(x))))
        x = self.head(x)
        return torch.sigmoid(x) if self.out_activation == "sigmoid" else x


class FDM(nn.Module):
    """Feature discrimination module (one per level 1, 2, 3), A9: 2-class logits.

    Args:
        channels: C_i of the encoder level.
        hidden_ratios: A9: widths of the two hidden convs as fractions of C_i.
        num_classes: A9: 2 (normal, anomalous).
    """

    def __init__(self, channels: int, hidden_ratios: Sequence[float] = (1.0, 0.5), num_classes: int = 2) -> None:
        super().__init__()
        h1, h2 = (max(1, round(channels * r)) for r in hidden_ratios)
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, h1, 3, 1, 1, bias=False),
            nn.BatchNorm2d(h1),
            nn.ReLU(inplace=True),
            nn.Conv2d(h1, h2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(h2),
            nn.ReLU(inplace=True),
            nn.Conv2d(h2, num_classes, 1),
        )

    def forward(self, features: Tensor, rec_features: Tensor) -> Tensor:
        """Logits (B, num_classes, H_i, W_i) of ``cat(Phi_i(x), Phi_i(x_rec))``."""
        return self.net(torch.cat([features, rec_features], 1))


class PerceptualNetwork(nn.Module):
    """Frozen ImageNet network whose activations feed the perceptual loss (never exported).

    ``vgg*`` backbones run ``features[:max(layers) + 1]`` and collect the outputs at the given
    ``features`` indices (paper: relu1_1, relu1_2, relu2_1, relu2_2, relu3_1 = 1, 3, 6, 8, 11;
    timm's own VGG ``features_only`` taps are different, spec trap T6). Any other backbone (the
    offline ``efficientnet_lite0``) uses timm ``features_only`` with ``out_indices=layers``.
    Weights come from :func:`anomalib_ext.backbones.create_model`. Inputs are [0, 1] images; the
    network applies the ImageNet normalisation itself. Parameters are frozen, the module stays in
    eval mode (``train()`` is a no-op), and gradients flow to the input (spec trap T5).

    Args:
        backbone: timm name, tagged (``"vgg16.tv_in1k"``) or not.
        layers: feature indices (VGG) or ``out_indices`` (others).
        pre_trained: load real weights (``False`` only for tests).
    """

    def __init__(
        self,
        backbone: str = "vgg16.tv_in1k",
        layers: Sequence[int] = (1, 3, 6, 8, 11),
        pre_trained: bool = True,
    ) -> None:
        super().__init__()
        self.layers = tuple(int(i) for i in layers)
        self.is_vgg = backbone.split(".", maxsplit=1)[0].startswith("vgg")
        if self.is_vgg:
            vgg = create_model(backbone, pretrained=pre_trained)
            self.net = vgg.features[: max(self.layers) + 1]
            for module in self.net.modules():  # in-place ReLUs would overwrite the captured taps
                if isinstance(module, nn.ReLU):
                    module.inplace = False
        else:
            self.net = create_model(backbone, pretrained=pre_trained, features_only=True, out_indices=self.layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PerceptualNetwork:
        """Stay in eval mode whatever Lightning asks (frozen BN statistics)."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Return the tap activations of ``images`` (B, 3, H, W) in [0, 1]."""
        x = (images - self.mean) / self.std
        if not self.is_vgg:
            return list(self.net(x))
        taps = []
        for index, module in enumerate(self.net):
            x = module(x)
            if index in self.layers:
                taps.append(x)
        return taps
