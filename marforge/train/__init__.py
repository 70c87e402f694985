"""Training the reference models here, reproducibly: `make weights` (never part of serve or test).

    datasets.py  Fashion-MNIST (Debian's package) and scikit-learn's digits, as 28x28 grayscale
    recipe.py    trains a version by its registry recipe; writes weights/<key>.pt and its provenance
    samples.py   exports each model's sample and eval images from its test split
"""
