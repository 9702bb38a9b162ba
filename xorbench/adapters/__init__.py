"""Framework adapters: the only modules that import torch, lightning, keras or tensorflow.

Importing this package imports no framework; :func:`xorbench.adapters.base.load_adapter` imports
one adapter, and with it one framework, on demand inside a worker process.
"""
