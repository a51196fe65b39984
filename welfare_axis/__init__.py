"""Command line and study pipeline of the welfare-axis toolkit."""

__version__ = "0.1.0"
