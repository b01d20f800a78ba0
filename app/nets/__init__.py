"""Network definitions and weight loading; pure PyTorch."""
