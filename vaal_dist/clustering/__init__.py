"""Clustering for diversity-aware selection at pool scale, as pure functions (no Ray).

- ``cluster_margin``: Cluster-Margin's clustering of a whole pool (FAISS k-means cells, then exact
  size-weighted average-linkage HAC over them), its round-robin selection, and a fingerprinted cache.
- ``typiclust``: TypiClust's k-means and exact k-NN typicality.
- ``kmeans``, ``hac``: the parts they share.
"""
