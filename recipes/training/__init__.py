"""recipes/training"""
