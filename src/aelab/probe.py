"""Few-label probes: how much a frozen encoder's codes help a classifier that sees only N labels.

The training split is encoded once (posterior means, ``model.embed``); N labelled images are
drawn from it, balanced over the classes, and two classifiers are fitted on their codes: a linear
one (standardised features, multinomial logistic regression) and a k-nearest-neighbour one
(Euclidean on the codes as they are). Both are scored on the test (or validation) split. The same
two classifiers on raw pixels (flattened, in [0, 1]) are the baseline the codes must beat.
Accuracy is the fraction of evaluation images classified correctly.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from torch import Tensor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .data import Batches, Split, balanced_subset
from .errors import ConfigError, DataError
from .models import Autoencoder

log = logging.getLogger(__name__)

LINEAR = {"C": 1.0, "max_iter": 5000, "solver": "lbfgs", "random_state": 0}   # L2, multinomial
KNN = {"weights": "uniform", "metric": "euclidean"}
FEATURES = ("codes", "pixels")
CLASSIFIERS = ("linear", "knn")
ACCURACY_UNIT = "fraction of the evaluation split's images classified correctly (0 to 1)"


@torch.no_grad()
def encode_split(model: Autoencoder, split: Split, batch_size: int = 1000) -> Tensor:
    """The code of every image of the split, ``model.embed`` in batches: (N, code_dim) float32 on
    the CPU. A label-conditional family (cvae) is given each image's label."""
    model.eval()
    codes = [(model.embed(x, y) if model.codes_use_labels else model.embed(x)).float().cpu()
             for x, y in Batches(split, batch_size)]
    return torch.cat(codes) if codes else torch.empty(0, 0)


def pixels(split: Split, index: np.ndarray | None = None) -> np.ndarray:
    """Images (all, or those at ``index``) flattened, in [0, 1]: (n, C * H * W) float32."""
    images = split.images if index is None else split.images[torch.as_tensor(index).to(split.images.device)]
    return images.flatten(1).float().div_(255).cpu().numpy()


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  k: int = 5) -> dict[str, float]:
    """Fit the linear and k-NN classifiers on (train_x, train_y); their accuracy on (test_x, test_y).

    Args:
        train_x: (n, n_features) features of the labelled images; train_y: (n,) their classes.
        test_x: (m, n_features) and test_y: (m,): the evaluation images.
        k: neighbours of the k-NN vote, capped at n.
    Returns:
        {"linear": accuracy, "knn": accuracy}, each a fraction of the m images.
    """
    linear = make_pipeline(StandardScaler(), LogisticRegression(**LINEAR))
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), **KNN)
    scores = {}
    for name, clf in (("linear", linear), ("knn", knn)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(train_x, train_y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("the linear probe did not converge in %d iterations", LINEAR["max_iter"])
        scores[name] = float((clf.predict(test_x) == test_y).mean())
    return scores

def check_unconditional(model: Autoencoder) -> None:
    """Refuse label-conditional families: their codes are computed from the label itself."""
    if model.codes_use_labels:
        raise ConfigError(f"a {model.family} encodes each image together with its label, so its codes "
                          "would give the answer away; probe an unconditional family (vae, ae, ...)")


def check_labels(train: Split, test: Split) -> None:
    """Raise DataError unless both splits carry labels, of at least two classes in training."""
    for name, split in (("training", train), ("evaluation", test)):
        if split.labels is None:
            raise DataError(f"the {name} split has no labels; the probe needs labelled training and "
                            "test images (label files, label arrays or class folders)")
    if len(torch.unique(train.labels)) < 2:
        raise DataError("the training split has one class only; a probe classifies, so it needs "
                        "at least two")


def probe(model: Autoencoder, train: Split, test: Split, n_labels: int | None, seed: int = 0,
          repeats: int = 1, k: int = 5, batch_size: int = 1000) -> dict:
    """Few-label accuracy of codes and of raw pixels, over ``repeats`` seeded labelled subsets.

    Args:
        model: a trained model whose ``embed`` does not see the label.
        train: the split the labelled images are drawn from; test: the split scored.
        n_labels: labelled images (a multiple of the number of classes), or None for all of train.
        seed: seed of the first subset; repeat r uses seed + r.
        repeats: subsets to average over (1 with n_labels None: there is only one).
        k: neighbours of the k-NN classifier (capped at the number of labelled images).
    Returns:
        {"codes_linear": mean accuracy, "codes_linear_std": std over repeats, ... for codes and
        pixels, linear and knn; "per_seed": {name: [accuracy per subset]}, "seeds", "n_labelled",
        "n_classes", "code_dim", "k"}.
    """
    check_unconditional(model)
    check_labels(train, test)
    if n_labels is None and repeats > 1:
        raise ConfigError("--repeats draws several labelled subsets; with --labels all there is only one")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    train_y, test_y = train.labels.cpu().numpy(), test.labels.cpu().numpy()
    codes_train = encode_split(model, train, batch_size).numpy()     # (N, code_dim)
    codes_test = encode_split(model, test, batch_size).numpy()
    pixels_test = pixels(test)
    seeds = [seed + r for r in range(repeats)]
    runs: dict[str, list[float]] = {f"{f}_{c}": [] for f in FEATURES for c in CLASSIFIERS}
    for s in seeds:
        idx = np.arange(len(train_y)) if n_labels is None else balanced_subset(train_y, n_labels, s)
        features = {"codes": (codes_train[idx], codes_test), "pixels": (pixels(train, idx), pixels_test)}
        for f, (x_train, x_test) in features.items():
            for c, acc in fit_and_score(x_train, train_y[idx], x_test, test_y, k).items():
                runs[f"{f}_{c}"].append(acc)
    result: dict = {}
    for name, values in runs.items():
        result[name] = float(np.mean(values))
        result[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {**result, "per_seed": runs, "seeds": seeds if n_labels is not None else [],
            "n_labelled": len(idx), "n_classes": len(np.unique(train_y)),
            "code_dim": codes_train.shape[1], "k": min(k, len(idx))}



def units() -> dict[str, str]:
    """The unit of every figure ``probe`` returns."""
    out = {}
    for f in FEATURES:
        for c in CLASSIFIERS:
            out[f"{f}_{c}"] = f"{ACCURACY_UNIT}, mean over the labelled subsets"
            out[f"{f}_{c}_std"] = ("sample standard deviation (ddof 1) of that accuracy over the "
                                   "subsets; 0 for one subset")
    return out


def settings(k: int) -> dict:
    """The classifiers' settings, for the report."""
    return {"linear": {"model": "LogisticRegression", "features": "standardised (StandardScaler fitted "
                       "on the labelled images)", "penalty": "l2", **LINEAR},
            "knn": {"model": "KNeighborsClassifier", "features": "as they are", "n_neighbors": k, **KNN}}
