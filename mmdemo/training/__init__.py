"""Training: settings, the feature cache, augmentation, the loop, the automatic recipe, fine-tuning a checkpoint, calibration, torchrun and scope fitting."""
