"""Networks built from the GATv2 layers."""
