"""What a fault can be aimed at, resolved to Linux primitives."""
