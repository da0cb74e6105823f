"""Where data comes from: the PAD API, the dataset registry, model artifacts."""
