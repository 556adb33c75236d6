"""This package's version, on its own so that the modules that record it (run.json, a round's fingerprint) need
not import the package's front door (__init__.py), which loads the API and with it those modules."""
__version__ = "0.1.0"
