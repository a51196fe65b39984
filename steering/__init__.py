"""Interventions with concept vectors and the evaluation harness."""
