"""vaal_dist: distributed active-learning selection on Ray."""
__version__ = "0.1.0"
