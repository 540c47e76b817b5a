"""The orders service. Orders and their lines; the order state machine and its side of the payment saga."""
