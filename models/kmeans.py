"""Mini-batch k-means (Sculley, *Web-Scale K-Means Clustering*, WWW 2010) as a small numpy model.

State: ``centers`` [k, d] (float64), ``counts`` v [k] (points each center has learned from),
``seen`` (points learned) and ``batches`` (mini-batches learned). ``partial_fit(X)`` learns one
mini-batch, per Sculley:

1. the first call sets the centers by k-means++ on ``X`` (scikit-learn's ``kmeans_plusplus``,
   seeded by ``seed``, so the same first mini-batch gives the same centers);
2. every row of ``X`` is assigned to its nearest center, with the centers as they are at the
   start of the mini-batch;
3. then row by row, in order: ``v[c] += 1``, ``eta = rate(v[c])``, ``c <- (1 - eta) c + eta x``.

Learning rates (``eta`` for a center that has now learned from ``v`` points):

- ``inverse_count``: ``1 / v`` (Sculley's): each center is the running mean of the points it
  learned from; it settles, and never forgets.
- ``constant``: ``eta``: an exponentially weighted mean, each new point of a center weighing
  ``eta`` and older ones fading by ``1 - eta``, so centers follow a slow drift.
- ``decayed``: ``v ** -decay`` (0 < decay <= 1): 1 is ``inverse_count``; below 1 the rate falls
  more slowly, so centers keep adapting longer (and still settle for decay > 0.5).

Distances are Euclidean, computed row by row (``sum((x - c) ** 2)``, not the matrix-product
expansion), so a row's distances do not depend on which other rows share its call: assigning a
point alone or in a mini-batch gives the same bits, which the streaming form relies on.

Why not scikit-learn's ``MiniBatchKMeans``: its ``partial_fit`` moves each center once per
mini-batch to the weighted mean of its old value and the batch's points. For ``1 / v`` that is
the same centers as Sculley's point-by-point rule (a test checks it, with reassignment off), but
it has no constant or decayed rate, it randomly reassigns small clusters by default, and its
state is a pickled estimator rather than a few arrays a snapshot can hold and a stream can resume.
"""
from __future__ import annotations

import numpy as np

LEARNING_RATES = ("inverse_count", "constant", "decayed")
# Settings left unset: the constructor's, and how many points a mini-batch holds (Sculley used 1,000).
DEFAULTS = {"learning_rate": "inverse_count", "eta": 0.01, "decay": 0.75, "seed": 0, "minibatch_size": 256}


class MiniBatchKMeans:
    """k centers learned one mini-batch at a time; see the module docstring for the rule."""

    def __init__(self, k: int, learning_rate: str = DEFAULTS["learning_rate"], eta: float = DEFAULTS["eta"],
                 decay: float = DEFAULTS["decay"], seed: int = DEFAULTS["seed"]):
        if learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {', '.join(LEARNING_RATES)}")
        self.k, self.learning_rate, self.eta, self.decay, self.seed = k, learning_rate, eta, decay, seed
        self.centers: np.ndarray | None = None
        self.counts = np.zeros(k, np.int64)
        self.seen = 0
        self.batches = 0

    @property
    def initialized(self) -> bool:
        return self.centers is not None

    def initialize(self, X: np.ndarray) -> None:
        """Centers by k-means++ on ``X`` (at least k rows), seeded: the same ``X`` gives the same centers."""
        from sklearn.cluster import kmeans_plusplus  # only when a model starts, not for every worker

        self.centers, _ = kmeans_plusplus(np.asarray(X, np.float64), self.k, random_state=self.seed)

    def distances(self, X: np.ndarray) -> np.ndarray:
        """[rows, k] Euclidean distances from each row of ``X`` to each center."""
        X = np.asarray(X, np.float64)
        return np.sqrt(((X[:, None, :] - self.centers[None, :, :]) ** 2).sum(axis=2))

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest center of each row (the lowest index on a tie) and the distance to it."""
        distances = self.distances(X)
        clusters = distances.argmin(axis=1)
        return clusters, distances[np.arange(len(clusters)), clusters]

    def rate(self, count: int) -> float:
        """eta for a center that has now learned from ``count`` points."""
        if self.learning_rate == "inverse_count":
            return 1.0 / count
        if self.learning_rate == "constant":
            return self.eta
        return float(count) ** -self.decay

    def partial_fit(self, X: np.ndarray) -> "MiniBatchKMeans":
        """Learn one mini-batch (initialising the centers from it first, if they are not yet set)."""
        X = np.asarray(X, np.float64)
        if not self.initialized:
            self.initialize(X)
        clusters, _ = self.predict(X)  # all with the centers at the start of the mini-batch
        for x, c in zip(X, clusters.tolist()):
            self.counts[c] += 1
            eta = self.rate(int(self.counts[c]))
            self.centers[c] = (1.0 - eta) * self.centers[c] + eta * x
        self.seen += len(X)
        self.batches += 1
        return self

    def to_dict(self) -> dict:
        """The settings and state as JSON-able values (float64 centers round-trip exactly)."""
        return {"k": self.k, "learning_rate": self.learning_rate, "eta": self.eta, "decay": self.decay,
                "seed": self.seed, "centers": None if self.centers is None else self.centers.tolist(),
                "counts": self.counts.tolist(), "seen": self.seen, "batches": self.batches}

    @classmethod
    def from_dict(cls, values: dict) -> "MiniBatchKMeans":
        model = cls(values["k"], values["learning_rate"], values["eta"], values["decay"], values["seed"])
        if values["centers"] is not None:
            model.centers = np.array(values["centers"], np.float64)
        model.counts = np.array(values["counts"], np.int64)
        model.seen, model.batches = values["seen"], values["batches"]
        return model
