"""recipes/common"""
