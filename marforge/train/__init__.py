"""Training the reference models here, reproducibly: `make weights` (never part of serve or test).

    datasets.py  Fashion-MNIST (Debian's package) and scikit-learn's digits, as 28x28 grayscale
    recipe.py    trains a version by its registry recipe; writes weights/<key>.pt and its provenance
    samples.py   exports each model's sample and eval images from its test split
    scenes.py        composes detection/segmentation scenes from real Fashion-MNIST photos (synthetic composition)
    scene_recipe.py  trains the reference detector and segmenter (fashiondet, fashionseg) on them
    scene_metrics.py their held-out mAP and mIoU, by torchmetrics
    scene_samples.py exports their sample and eval scenes, with true boxes or masks
    debian_text.py   Debian package descriptions and their sections, from apt-cache (the text corpus)
    text_recipe.py   trains the own-handler text example (debsections) through its handler's tokenizer
"""
