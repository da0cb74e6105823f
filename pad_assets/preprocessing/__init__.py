"""Preprocessing pipelines: a card image in, one cached array out.

Built in: ``PADNeuralNetworkPipeline`` (the PAD TF Lite input) and ``PADPLSPipeline`` (the
360 PLS features), both identical to the PAD tool's own code. ``CustomResearchPipeline``
is a researcher's own preprocessing as a dict of validated parameters (no subclassing);
``WhiteBalancedNNPipeline`` and the ``examples`` module show how to write one's own class. Importing this package loads only
NumPy and Pillow (OpenCV is imported on first PLS use; no TensorFlow).
"""

from __future__ import annotations

from .base import FunctionPipeline, PreprocessingPipeline
from .decode import DecodedImage, decode_image
from .examples import WhiteBalancedNNPipeline
from .nn import PADNeuralNetworkPipeline
from .pls import PADPLSPipeline
from .research import PAD_NN_RESEARCH_PARAMS, CustomResearchPipeline

__all__ = [
    "PAD_NN_RESEARCH_PARAMS",
    "CustomResearchPipeline",
    "DecodedImage",
    "FunctionPipeline",
    "PADNeuralNetworkPipeline",
    "PADPLSPipeline",
    "PreprocessingPipeline",
    "WhiteBalancedNNPipeline",
    "decode_image",
]
