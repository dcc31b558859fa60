"""mmdemo: try, explain and fine-tune a multimodal (image + text) classifier.

Importing the package loads no weights and touches no network; see service.Predictor.
"""

__version__ = "0.1.0"
