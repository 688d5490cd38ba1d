"""What a configuration change would do, before it is applied (`tierflow preview`)."""
