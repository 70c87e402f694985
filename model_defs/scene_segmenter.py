"""fashionseg's segmenter: a small encoder-decoder for grayscale scenes, with torchvision's
segmentation interface: `forward(x)` takes N x 1 x H x W float (pixels / 255, normalised with the
mean and std in the weights' metadata, as torchvision's segmentation models expect their input
normalised outside) and returns `{"out": N x 11 x H x W}` logits at the input's size, any size.

Class 0 is the background and 1..10 are the Fashion-MNIST classes (class index + 1). The encoder
works at 1/2, 1/4 and 1/8 of the input (with dilated convolutions for context at 1/8); the decoder
upsamples bilinearly to each skip's size, so any H and W work. TorchServe builds it with no
arguments and loads a state_dict into it.
"""

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 11  # background + the 10 Fashion-MNIST classes


def conv_bn(c_in, c_out, stride=1, dilation=1):
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SceneSegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.down1 = nn.Sequential(conv_bn(1, 24, stride=2), conv_bn(24, 24))  # 1/2
        self.down2 = nn.Sequential(conv_bn(24, 48, stride=2), conv_bn(48, 48))  # 1/4
        self.down3 = nn.Sequential(conv_bn(48, 128, stride=2), conv_bn(128, 128))  # 1/8
        self.context = nn.Sequential(conv_bn(128, 128, dilation=2), conv_bn(128, 128, dilation=4),
                                     conv_bn(128, 128, dilation=2), conv_bn(128, 128))
        self.up2 = conv_bn(128 + 48, 48)
        self.up1 = conv_bn(48 + 24, 16)
        self.head = nn.Sequential(conv_bn(16 + 1, 16), nn.Conv2d(16, NUM_CLASSES, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.down1(x)
        f2 = self.down2(f1)
        f3 = self.context(self.down3(f2))
        y = self.up2(torch.cat([_up(f3, f2), f2], 1))
        y = self.up1(torch.cat([_up(y, f1), f1], 1))
        return {"out": self.head(torch.cat([_up(y, x), x], 1))}
