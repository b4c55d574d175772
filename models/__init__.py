"""Domain vocabulary and wire formats shared by every part of citybrain."""
