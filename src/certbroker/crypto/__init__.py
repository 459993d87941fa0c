"""Key, CSR and export handling on top of `cryptography`: no ACME or storage here."""
