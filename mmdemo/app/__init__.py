"""The web app's backend, below the UI: checkpoints per owner, fine-tune jobs and their worker program, uploads, and settings (limits and the one data folder)."""
