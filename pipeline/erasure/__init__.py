"""Erasing a customer everywhere tierflow keeps them (`tierflow forget`)."""
