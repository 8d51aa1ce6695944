"""``relprop.neon``: Neuralization-Propagation (NEON) for unsupervised models.

A fitted unsupervised model is first rewritten as a functionally equivalent network (it is
*neuralized*), then its prediction is propagated back to the input features with LRP rules
derived for that network (Montavon et al. 2019, "Layer-wise relevance propagation: an
overview", §10.4):

* k-means cluster assignment (Kauffmann et al., "From clustering to cluster explanations via
  neural networks", TNNLS 2024): :func:`neuralize_kmeans`, :func:`explain_kmeans`;
* one-class SVM and kernel density outlier scores (Kauffmann et al., "Towards explaining
  anomalies: a deep Taylor decomposition of one-class models", Pattern Recognition 2020):
  :func:`neuralize_ocsvm`, :func:`neuralize_kde`, :func:`explain_anomaly`.

Both return the same :class:`~relprop.Explanation` as :func:`relprop.explain`. Scikit-learn
estimators are read through their fitted attributes; scikit-learn is never imported.

>>> net = relprop.neon.neuralize_kmeans(kmeans)            # doctest: +SKIP
>>> expl = relprop.neon.explain_kmeans(net, X)              # doctest: +SKIP
>>> expl.relevance.sum(1) - expl.explained                  # doctest: +SKIP  (≈ 0)
"""

from __future__ import annotations

from .anomaly import AnomalyNetwork, explain_anomaly, neuralize_kde, neuralize_ocsvm
from .kmeans import KMeansNetwork, explain_kmeans, neuralize_kmeans

__all__ = [
    "KMeansNetwork", "neuralize_kmeans", "explain_kmeans",
    "AnomalyNetwork", "neuralize_ocsvm", "neuralize_kde", "explain_anomaly",
]
