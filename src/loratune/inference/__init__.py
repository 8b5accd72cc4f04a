"""Inference: labelling new texts with a trained model (`Predictor`), and the files predictions are read from and
written to."""
