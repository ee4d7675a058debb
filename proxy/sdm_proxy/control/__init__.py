"""Control plane: who may use which credential, and the decisions that follow from it."""
