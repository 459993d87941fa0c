"""The REST API (`/api/v1`): the same services as the CLI, behind access control."""
