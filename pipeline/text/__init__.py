"""Text: splitting into chunks, and reading book files into chapters."""
