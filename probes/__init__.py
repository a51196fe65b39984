"""Model loading, activation capture, concept vectors and readouts."""
