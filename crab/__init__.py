"""Crab: bimodal speech emotion recognition with Multi Layer Contrastive Supervision."""

__version__ = "0.1.0"
