"""Real-time segmentation: RFM scores and segments, lifecycle, membership tiers,
tags and AIPL (pure modules), and their Redis side (`pipeline.tiering.store`)."""
