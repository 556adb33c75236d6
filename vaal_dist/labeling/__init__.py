"""The labeling loop: export a selection to a labeling tool, import its answers for the next round."""
