"""Data sets: reading a CSV of image, text and label, safe archive extraction, and the generated
(Sort-of-CLEVR) and real (digit scans, photo patches, colour photo crops) sets."""
