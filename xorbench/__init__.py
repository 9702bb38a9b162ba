"""xorbench: a tiny XOR network trained in Lightning and Keras, over a grid of seeds."""

__version__ = "0.1.0"
