"""Studies: a value chosen per recipe on the validation split, seeds trained with it, and what is read from them
(paired per-seed differences with their intervals, the score against the batch, the loss diagnostics)."""
