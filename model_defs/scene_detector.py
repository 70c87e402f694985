"""fashiondet's detector: torchvision's FCOS on a small convolutional backbone, for grayscale scenes.

It keeps torchvision's detection interface exactly. In eval mode `forward(images)` takes a list of
1 x H x W float tensors of any size, values in [0, 1], and returns per image `{"boxes": [N, 4] xyxy
float in that image's pixels, "labels": [N] int64, "scores": [N] float}`; in train mode
`forward(images, targets)` returns FCOS's losses. Inside, torchvision's GeneralizedRCNNTransform
resizes each image so its shorter side is 96 pixels (its longer at most 320) and normalises it with
mean 0.5 and std 0.5; boxes come back in the pixels of the image as given.

Labels are torchvision's convention: 1..10 are the Fashion-MNIST classes (class index + 1) and 0 is
reserved for the background (never predicted). `score_thresh`, `nms_thresh`, `detections_per_img`
and `topk_candidates` are attributes, settable after construction. TorchServe builds it with no
arguments and loads a state_dict into it.
"""

from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

NUM_CLASSES = 11  # background + the 10 Fashion-MNIST classes
STRIDE = 8  # the backbone's one feature map is 1/8 of the (resized) image


def conv_bn(c_in, c_out, stride=1, dilation=1):
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SceneDetector(FCOS):
    def __init__(self):
        backbone = nn.Sequential(
            conv_bn(1, 32, stride=2), conv_bn(32, 32),
            conv_bn(32, 64, stride=2), conv_bn(64, 64),
            conv_bn(64, 96, stride=2), conv_bn(96, 96), conv_bn(96, 96, dilation=2),
        )
        backbone.out_channels = 96
        super().__init__(
            backbone,
            num_classes=NUM_CLASSES,
            min_size=96,
            max_size=320,
            image_mean=[0.5],
            image_std=[0.5],
            anchor_generator=AnchorGenerator(sizes=((STRIDE,),), aspect_ratios=((1.0,),)),
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=20,
            topk_candidates=200,
        )
