"""Benchmarks that print figures: speed, the app over HTTP, /predict's stages, the shared-server stress test, Sort-of-CLEVR accuracy, out-of-scope rates, baselines."""
