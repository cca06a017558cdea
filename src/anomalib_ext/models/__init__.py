"""Model folders, each laid out like one of anomalib's own (lightning_model, torch_model, loss, anomaly_map)."""
