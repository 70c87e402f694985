"""CheXNet (Rajpurkar et al. 2017; the arnoweng/CheXNet PyTorch reimplementation): torchvision's
DenseNet121 whose classifier is Linear(1024, 14) followed by a sigmoid, for 3 x 224 x 224 inputs
and the 14 findings of NIH ChestX-ray14. It returns probabilities.

TorchServe builds it with no arguments and loads a state_dict into it; nothing is downloaded.
The class and attribute names are the original's (`DenseNet121`, `self.densenet121`), so a
checkpoint of the original matches it once its DataParallel prefix and PyTorch 0.3 names are
remapped (`marforge import ... --preset chexnet` does both).
"""

import torchvision
from torch import nn

FINDINGS = 14


class DenseNet121(nn.Module):
    def __init__(self):
        super().__init__()
        self.densenet121 = torchvision.models.densenet121(weights=None)
        features = self.densenet121.classifier.in_features
        self.densenet121.classifier = nn.Sequential(nn.Linear(features, FINDINGS), nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)
