"""Handwritten-character recognisers on EMNIST, trained and served through LightningCLI."""
