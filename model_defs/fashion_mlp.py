"""A fully connected network on the flattened 28x28 image: 784 -> 256 -> 128 -> 10 with ELU.

TorchServe builds it with no arguments and loads a state_dict into it; it returns log-probabilities.
"""

import torch
from torch import nn
from torch.nn import functional as F


class FashionMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.elu(self.fc1(x))
        x = F.elu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)
