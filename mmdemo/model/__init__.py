"""The model: its configuration and builder, the image and text encoders, cross-modal fusion, preprocessing, checkpoints (safetensors + JSON) and model cards."""
