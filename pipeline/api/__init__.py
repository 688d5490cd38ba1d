"""The HTTP API for apps (`tierflow api`): a customer's tiers and wallet, claiming a
code, redeeming points, withdrawing cash-envelope money and giving a delivery
address, through the same functions and with the same refusal reasons as the CLI.
See docs/api.md."""
