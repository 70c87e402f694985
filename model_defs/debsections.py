"""A bag-of-words text classifier: the mean of its tokens' embeddings, then one linear layer (fastText's shape).

TorchServe builds it with no arguments and loads a state_dict into it. It takes `(ids, offsets)` as
nn.EmbeddingBag does: the token ids of a batch's texts one after another (int64, each below
VOCAB_CAPACITY) and the offset of each text's first id; a text with no known token is an empty bag,
whose embedding is zero. It returns log-probabilities, batch x CLASSES. A version's vocabulary uses the
first rows (its size is at most VOCAB_CAPACITY); CLASSES is the number of sections it is trained on.
"""

import torch
from torch import nn
from torch.nn import functional as F

VOCAB_CAPACITY = 20000
EMBED_DIM = 32
CLASSES = 12


class DebSections(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingBag(VOCAB_CAPACITY, EMBED_DIM, mode="mean")
        self.classifier = nn.Linear(EMBED_DIM, CLASSES)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.embedding(ids, offsets)), dim=1)
