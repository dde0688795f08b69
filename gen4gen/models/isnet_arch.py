"""IS-Net (Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022) in PyTorch.

A re-implementation of the inference network of xuebinqin/DIS (``ISNetDIS``) whose module
names, and therefore state-dict keys, are those of the official ``isnet-general-use.pth``:
a stride-2 input convolution, six encoder stages of nested U-blocks (RSU-7 ... RSU-4F), five
decoder stages, and six side outputs upsampled to the input size and passed through a sigmoid.
The topology was checked against the ONNX export the embedded backend uses (same convolutions,
dilations, pooling, bilinear upsampling); ``tests/test_paper_segmentation.py`` compares the two
on real weights when that file is present.

This module imports torch at the top: only ``segmentation_torch`` imports it, when the
backend is built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class REBNCONV(nn.Module):
    """3x3 convolution (optionally dilated), batch norm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1, stride: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate, stride=stride)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def _up_to(x, like):
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class _RSU(nn.Module):
    """Residual U-block of ``height`` levels: ``height - 2`` poolings, a dilated bottom.

    RSU-7 ... RSU-4 in the paper; layer names follow the official code (rebnconvin,
    rebnconv1..height, pool1..height-2, rebnconv{height-1}d..1d).
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for level in range(1, height - 1):
            setattr(self, f"pool{level}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            setattr(self, f"rebnconv{level + 1}", REBNCONV(mid_ch, mid_ch))
        # The bottom level sees the same resolution, dilated by 2 instead of pooled.
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for level in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{level}d", REBNCONV(mid_ch * 2, mid_ch))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        skips = [self.rebnconv1(hxin)]
        for level in range(1, self.height - 1):
            pooled = getattr(self, f"pool{level}")(skips[-1])
            skips.append(getattr(self, f"rebnconv{level + 1}")(pooled))
        hx = getattr(self, f"rebnconv{self.height}")(skips[-1])
        for level in range(self.height - 1, 0, -1):
            skip = skips[level - 1]
            name = f"rebnconv{level}d"
            hx = getattr(self, name)(torch.cat((hx, skip), 1))
            if level > 1:
                hx = _up_to(hx, skips[level - 2])
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4F: no pooling, dilations 1, 2, 4, 8 instead (used where the maps are already small)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


def _pool():
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


class ISNetDIS(nn.Module):
    """The DIS segmentation network; ``forward`` returns the six side outputs (sigmoid), finest first."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, 64, 3, stride=2, padding=1)
        self.pool_in = _pool()  # defined (and in the checkpoint's module tree) but unused at inference
        self.stage1 = _RSU(7, 64, 32, 64)
        self.pool12 = _pool()
        self.stage2 = _RSU(6, 64, 32, 128)
        self.pool23 = _pool()
        self.stage3 = _RSU(5, 128, 64, 256)
        self.pool34 = _pool()
        self.stage4 = _RSU(4, 256, 128, 512)
        self.pool45 = _pool()
        self.stage5 = RSU4F(512, 256, 512)
        self.pool56 = _pool()
        self.stage6 = RSU4F(512, 256, 512)
        self.stage5d = RSU4F(1024, 256, 512)
        self.stage4d = _RSU(4, 1024, 128, 256)
        self.stage3d = _RSU(5, 512, 64, 128)
        self.stage2d = _RSU(6, 256, 32, 64)
        self.stage1d = _RSU(7, 128, 16, 64)
        self.side1 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side2 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side3 = nn.Conv2d(128, out_ch, 3, padding=1)
        self.side4 = nn.Conv2d(256, out_ch, 3, padding=1)
        self.side5 = nn.Conv2d(512, out_ch, 3, padding=1)
        self.side6 = nn.Conv2d(512, out_ch, 3, padding=1)

    def forward(self, x):
        hxin = self.conv_in(x)
        hx1 = self.stage1(hxin)
        hx2 = self.stage2(self.pool12(hx1))
        hx3 = self.stage3(self.pool23(hx2))
        hx4 = self.stage4(self.pool34(hx3))
        hx5 = self.stage5(self.pool45(hx4))
        hx6 = self.stage6(self.pool56(hx5))
        hx5d = self.stage5d(torch.cat((_up_to(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((_up_to(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_up_to(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_up_to(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_up_to(hx2d, hx1), hx1), 1))
        sides = [self.side1(hx1d), self.side2(hx2d), self.side3(hx3d), self.side4(hx4d), self.side5(hx5d),
                 self.side6(hx6)]
        return [torch.sigmoid(_up_to(s, x)) for s in sides]
