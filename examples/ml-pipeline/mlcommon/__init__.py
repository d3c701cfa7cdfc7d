"""Code shared by the example's Lambda functions and its training container.

Both images copy this folder beside their own code (see functions/Dockerfile and
training/Dockerfile), so there is one copy of it in the repository.
"""
