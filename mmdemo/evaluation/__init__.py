"""Evaluation of a checkpoint on a labelled set: the Evaluate engine, the HTML report and the ratings store."""
