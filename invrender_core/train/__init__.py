"""Training code: losses (`depth_losses`: MegaDepth-style depth supervision), datasets and the trainer.

Nothing here is needed at inference time; the add-on and `invrender decompose` never import it.
"""
