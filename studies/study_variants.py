"""The variants of ``studies/cifar10_study.py`` and the grammar of their run names (``<method>-<variant>-seed<S>``),
shared with ``studies/study_summary.py``, which pairs each Q-regularized run with its control by name."""

from __future__ import annotations

# The Q-regularized variants and the flags each adds to the package's default Q-reg: qreg-zscore, the candidate after
# the unnormalized Q term's blow-up (Q_i in z-scores, scale-free); qreg-lambda1e-4, the next one (zscore collapsed
# too), the preprint's Q-term weight, 100x smaller.
QREG_VARIANTS = {"qreg": (), "finetune-qreg": (), "qreg-zscore": ("--qscore-normalize", "zscore"),
                 "qreg-lambda1e-4": ("--lambda1", "1e-4")}  # fmt: skip
# Recipes other than the method's YAML, named by a variant's suffix ("baseline-sgd", "qreg-sgd", "finetune-qreg-sgd"...):
# sgd is lightly's CIFAR-10 benchmark optimizer (SGD, lr 0.06 per 128 images, weight decay 5e-4), with which BYOL
# learns; with the recipe's LARS, BYOL stays near the kNN top-1 of its random initialization and never converges here
# (its EMA target's tau made no difference over the first 7 epochs, 0.9 or 0.99, nor LARS at lr 0.4 or clipped over 4).
RECIPES = {"sgd": ("--optimizer", "sgd", "--lr", "0.12", "--weight-decay", "5e-4")}
PLAIN_VARIANTS = ("baseline", "qreg", "finetune-qreg", "finetune-plain", "qreg-zscore", "qreg-lambda1e-4")
VARIANTS = (*PLAIN_VARIANTS, "supervised", *(f"{v}-{r}" for r in RECIPES for v in PLAIN_VARIANTS))


def split_recipe(variant: str) -> tuple[str, str | None]:
    """``"finetune-qreg-sgd"`` -> ``("finetune-qreg", "sgd")``; ``("qreg", None)`` for the YAML's recipe."""
    for recipe in RECIPES:
        if variant.endswith(f"-{recipe}"):
            return variant.removesuffix(f"-{recipe}"), recipe
    return variant, None


def with_recipe(variant: str, recipe: str | None) -> str:
    """The inverse of ``split_recipe``."""
    return f"{variant}-{recipe}" if recipe else variant
