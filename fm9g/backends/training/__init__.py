"""What both trainer backends share: the train config, the one run sequence (:mod:`.run`) with its
output, batches, the loop and loss, the LR schedule, metrics, checkpoints, resume and the optimizer
state of either backend. Delta engines are reached only through the plugin registry."""
