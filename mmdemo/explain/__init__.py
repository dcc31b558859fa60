"""Explanations: attention maps and word relevance, their faithfulness checks, relation objects and counterfactual edits."""
