"""Explanations: attention maps and word relevance, their faithfulness checks, relation objects,
counterfactual edits, and the pictures and charts that show them (render.py)."""
