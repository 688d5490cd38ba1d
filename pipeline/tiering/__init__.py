"""Real-time segmentation: RFM scores and segments, lifecycle, membership tiers,
tags and AIPL (pure modules), and their Redis side (`store.TierStore`, with its
key layout, population statistics, decay schedule and change outbox beside it)."""
