"""The paper's text maze as a Gymnasium environment."""
