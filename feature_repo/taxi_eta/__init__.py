"""Taxi-ETA use case: how long a Chicago taxi trip will take, predicted when the rider books."""
